"""Pictures of a separation: the mixture's spectrogram with each source drawn over it in
its own colour (the paper's Figure 1), and a video of it with a moving playhead.

Spectrograms are accumulated while the audio streams past (:class:`SpectrogramAccumulator`),
pooled in time so that an hour-long file still makes a picture of bounded size.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdsep import files

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324"]


class SpectrogramAccumulator:
    """Streaming power spectrogram of C channels: feed (C, t) chunks, read (C, F, columns).

    Columns are averages of ``pool`` consecutive STFT frames, with ``pool`` chosen from the
    expected length so that there are at most about ``max_columns`` of them.
    """

    def __init__(self, sample_rate: int, channels: int, expected_samples: int, n_fft: int = 512,
                 max_columns: int = 2400):
        self.sample_rate, self.n_fft, self.hop = sample_rate, n_fft, n_fft // 2
        frames = max(1, expected_samples // self.hop)
        self.pool = max(1, math.ceil(frames / max_columns))
        self.window = np.hanning(n_fft).astype(np.float32)
        self.carry = np.zeros((channels, 0), np.float32)
        self.frames: list[np.ndarray] = []  # pooled columns (C, F)
        self.partial = np.zeros((channels, n_fft // 2 + 1), np.float64)
        self.partial_count = 0

    def add(self, chunk: np.ndarray) -> None:
        x = np.concatenate([self.carry, chunk], axis=1)
        n = 0 if x.shape[1] < self.n_fft else (x.shape[1] - self.n_fft) // self.hop + 1
        if n:
            idx = np.arange(self.n_fft)[None, :] + self.hop * np.arange(n)[:, None]  # (n, n_fft)
            power = np.abs(np.fft.rfft(x[:, idx] * self.window, axis=-1)) ** 2  # (C, n, F)
            for i in range(n):
                self.partial += power[:, i]
                self.partial_count += 1
                if self.partial_count == self.pool:
                    self.frames.append(self.partial / self.pool)
                    self.partial = np.zeros_like(self.partial)
                    self.partial_count = 0
        self.carry = x[:, n * self.hop:]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(power (C, F, N), times (N,) s, freqs (F,) Hz)."""
        cols = list(self.frames)
        if self.partial_count:
            cols.append(self.partial / self.partial_count)
        if not cols:
            cols = [np.zeros_like(self.partial)]
        power = np.stack(cols, axis=-1)
        times = (np.arange(power.shape[-1]) * self.pool + 0.5 * self.pool) * self.hop / self.sample_rate
        freqs = np.fft.rfftfreq(self.n_fft, 1 / self.sample_rate)
        return power, times, freqs


def fft_size(sample_rate: int) -> int:
    """The STFT length for pictures: about 23 ms (512 at 22.05 kHz, 1024 at 44.1/48 kHz)."""
    return int(2 ** round(math.log2(max(64, 0.0232 * sample_rate))))


SCALES = ("background", "absolute")


@dataclass(frozen=True)
class LevelScale:
    """How power maps to colour strength: ``level = (dB − reference − floor) / (top − floor)``,
    clipped to [0, 1].

    ``background``: the reference is each frequency row's median level over time, so a steady
    noise (wind, rumble, a stream) sits at 0 whatever its loudness and a bird 10 dB above its
    band's background shows as strongly under 60 dB of rumble as in a quiet night.
    ``absolute``: one reference for all rows (0 dB), floor and top taken from the recording's
    level distribution, as a classic spectrogram.
    """

    mode: str
    reference_db: np.ndarray  # (F,)
    floor_db: float
    top_db: float

    def level(self, power: np.ndarray) -> np.ndarray:
        """(..., F, N) power → (..., F, N) strength in [0, 1]."""
        db = 10 * np.log10(power + 1e-12) - self.reference_db[:, None]
        return np.clip((db - self.floor_db) / max(self.top_db - self.floor_db, 1e-6), 0, 1)

    def describe(self) -> str:
        what = "dB above each band's median" if self.mode == "background" else "dB"
        return f"{self.floor_db:.0f} … {self.top_db:.0f} {what}"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "floor_db": round(self.floor_db, 2), "top_db": round(self.top_db, 2),
                "describe": self.describe()}


def level_scale(mixture: np.ndarray, mode: str = "background", range_db: float | None = None) -> LevelScale:
    """The scale for a picture of ``mixture`` power (F, N); ``range_db`` fixes top − floor
    (default: from the recording, at most 60 dB)."""
    if mode not in SCALES:
        raise ValueError(f"level scale must be one of {', '.join(SCALES)}, not {mode!r}")
    db = 10 * np.log10(mixture + 1e-12)
    if mode == "background":
        reference = np.median(db, axis=1)  # (F,)
        # rows the recording hardly reaches (above an anti-alias filter's edge) are not lifted
        reference = np.maximum(reference, np.percentile(reference, 10) - 10.0)
        rel = db - reference[:, None]
        # The power of a steady noise in one bin fluctuates: 95 % of it stays within 6.4 dB of its
        # median, so a floor of 6 dB keeps the background's speckle white.
        floor = 6.0
        top = max(float(np.percentile(rel, 99.8)), floor + 12.0)
        if range_db is not None:
            top = floor + range_db
        return LevelScale(mode, reference, floor, top)
    reference = np.zeros(db.shape[0])
    top = float(np.percentile(db, 99.7))
    floor = max(float(np.median(db)), top - 60.0) if range_db is None else top - range_db
    return LevelScale(mode, reference, floor, top)


def _rgb(colour: str) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.array(to_rgb(colour))


def track_colour(k: int) -> str:
    """The colour of track ``k`` (0-based) in every picture and in the page."""
    return COLOURS[k % len(COLOURS)]


#: The colour of what lies above the separator's band (``high_band.wav``).
HIGH_BAND_COLOUR = "#8c8c8c"


def png_bytes(rgb: np.ndarray) -> bytes:
    """(F, N, 3) RGB in [0, 1], row 0 the lowest frequency → PNG with the highest at the top."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(rgb[::-1], 0, 1) * 255).astype(np.uint8)).save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def combined_rgb(mixture: np.ndarray, sources: np.ndarray, scale: LevelScale,
                 colours: list[str] | None = None) -> np.ndarray:
    """The paper's Figure 1 as an image: mixture (F, N) in grey, each bin tinted by the source
    (of ``sources``, (M, F, N)) that dominates it, strongly where it is loud and dominant.
    ``colours``: one per source (default :func:`track_colour`).
    Returns (F, N, 3) RGB in [0, 1], row 0 the lowest frequency."""
    eps = 1e-12
    grey = 1.0 - 0.55 * np.sqrt(scale.level(mixture))  # white background, louder = darker
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    winner = sources.argmax(axis=0)  # (F, N): the source that dominates each bin
    loud = np.take_along_axis(sources, winner[None], 0)[0]
    m_count = sources.shape[0]
    share = loud / (sources.sum(axis=0) + eps)  # 1/M … 1
    dominance = np.clip((share - 1 / m_count) / max(1 - 1 / m_count, eps), 0, 1)
    alpha = np.sqrt(scale.level(loud)) * (0.45 + 0.55 * dominance)  # sqrt: faint birds still show
    colours = colours or [track_colour(m) for m in range(m_count)]
    tint = np.stack([_rgb(c) for c in colours])[winner]  # (F, N, 3)
    return rgb * (1 - alpha[..., None]) + tint * alpha[..., None]


def track_rgb(power: np.ndarray, colour: str, scale: LevelScale) -> np.ndarray:
    """One track's power (F, N) from white to its colour (darkened at the top of the scale).
    Returns (F, N, 3) RGB in [0, 1]."""
    level = np.sqrt(scale.level(power))[..., None]
    full = _rgb(colour)
    strong = full * (1 - 0.35 * np.clip(level * 2 - 1, 0, 1))  # the loudest bins a shade darker
    return 1.0 - level * (1.0 - strong)


def legend_labels(levels_db: list[float], names: list[str] | None = None) -> list[str]:
    """``track k (−34.0 dB)``: each source's level relative to the mixture, as in separation.json."""
    names = names or [f"track {k + 1}" for k in range(len(levels_db))]
    return [f"{n} ({lv:+.1f} dB)" for n, lv in zip(names, levels_db)]


def plot_separation(mixture: np.ndarray, sources: np.ndarray, times: np.ndarray, freqs: np.ndarray, path: str | Path,
                    title: str = "", levels_db: list[float] | None = None, scale: str = "background") -> dict:
    """The mixture power (F, N) with its sources (M, F, N) over it, each in its own colour, and
    below it one panel per source (the per-track view), all on one :class:`LevelScale`.
    ``levels_db`` are the legend's levels (separation.json's ``level_db``); without them they
    are measured here. Writes a PNG atomically and returns the plot area in pixels (x0, x1,
    y0, y1 from the top-left, spanning every panel) for the video's playhead, and the legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    m_count = sources.shape[0]
    lv = level_scale(mixture, scale)
    if levels_db is None:
        levels_db = [float(10 * np.log10(s.sum() / (mixture.sum() + 1e-20) + 1e-20)) for s in sources]
    labels = legend_labels(levels_db)
    step = times[1] - times[0] if len(times) > 1 else 0.0
    extent = [max(0.0, times[0] - step / 2), times[-1] + step / 2, freqs[0] / 1000, freqs[-1] / 1000]

    heights = [4.0] + [1.0] * m_count
    fig, axes = plt.subplots(1 + m_count, 1, figsize=(14, 1.3 + sum(heights)), dpi=100, sharex=True,
                             gridspec_kw={"height_ratios": heights, "hspace": 0.08})
    ax = axes[0]
    ax.imshow(combined_rgb(mixture, sources, lv), origin="lower", aspect="auto", extent=extent,
              interpolation="nearest")
    ax.legend(handles=[Patch(color=track_colour(m), label=labels[m]) for m in range(m_count)], loc="upper right",
              fontsize=9, framealpha=0.85, title="level re. the mixture", title_fontsize=8)
    ax.set_ylabel("frequency (kHz)")
    ax.set_title(f"{title}\nlevel scale: {lv.describe()}" if title else f"level scale: {lv.describe()}",
                 fontsize=10)
    for m in range(m_count):
        a = axes[1 + m]
        a.imshow(track_rgb(sources[m], track_colour(m), lv), origin="lower", aspect="auto", extent=extent,
                 interpolation="nearest")
        a.text(0.005, 0.93, labels[m], transform=a.transAxes, va="top", fontsize=8,
               bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": track_colour(m), "pad": 2})
        a.set_yticks([0, round(extent[3] / 2)])
    axes[-1].set_xlabel("time (s)")
    fig.subplots_adjust(left=0.05, right=0.99, top=1 - 0.75 / (1.3 + sum(heights)),
                        bottom=0.5 / (1.3 + sum(heights)))
    try:
        with files.atomic(path) as tmp:
            fig.savefig(tmp, format="png")
        fig.canvas.draw()
        top, bottom = axes[0].get_window_extent(), axes[-1].get_window_extent()
        height = fig.canvas.get_width_height()[1]
        area = {"x0": top.x0, "x1": top.x1, "y0": height - top.y1, "y1": height - bottom.y0,
                "t0": extent[0], "t1": extent[1], "legend": labels, "scale": lv.to_dict()}
    finally:
        plt.close(fig)
    return area


class VideoError(Exception):
    pass


def make_video(picture: Path, audio_path: Path, duration: float, area: dict, path: Path) -> None:
    """The picture with a playhead moving across its plot area in time with the audio (ffmpeg)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise VideoError("ffmpeg not found: install it (e.g. apt-get install ffmpeg) to write videos")
    x0, x1, t0, t1 = area["x0"], area["x1"], area["t0"], area["t1"]
    y0, y1 = int(area["y0"]), int(area["y1"])
    speed = (x1 - x0) / max(t1 - t0, 1e-9)
    graph = (f"color=c=black@0.8:s=3x{max(2, y1 - y0)}[bar];"
             f"[0:v][bar]overlay=x='{x0:.2f}+({speed:.6f})*(t-{t0:.4f})':y={y0}:shortest=1,"
             "scale=trunc(iw/2)*2:trunc(ih/2)*2,format=yuv420p[v]")
    with files.atomic(path) as tmp:
        cmd = [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-loop", "1", "-framerate", "10", "-i", str(picture),
               "-i", str(audio_path), "-filter_complex", graph, "-map", "[v]", "-map", "1:a", "-c:v", "libx264",
               "-preset", "veryfast", "-tune", "stillimage", "-c:a", "aac", "-b:a", "128k", "-t", f"{duration:.3f}",
               "-shortest", "-f", "mp4", str(tmp)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise VideoError("ffmpeg failed: " + (res.stderr.strip().splitlines() or ["unknown error"])[-1])
