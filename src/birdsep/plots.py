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
            self._pool_frames(power)
        self.carry = x[:, n * self.hop:]

    def _pool_frames(self, power: np.ndarray) -> None:
        """Add (C, n, F) frames to the running column, ``pool`` frames a column. Whole columns
        are summed over their frames' positions (``pool`` vector additions, not one per frame),
        adding the frames in the same order into float64 as one at a time would: the same
        columns to the last bit."""
        i = 0
        if self.partial_count:  # finish the column begun in the chunk before
            i = min(len(power[0]), self.pool - self.partial_count)
            for k in range(i):
                self.partial += power[:, k]
            self.partial_count += i
            if self.partial_count == self.pool:
                self.frames.append(self.partial / self.pool)
                self.partial, self.partial_count = np.zeros_like(self.partial), 0
        whole = (power.shape[1] - i) // self.pool
        if whole:
            groups = power[:, i : i + whole * self.pool].reshape(power.shape[0], whole, self.pool, -1)
            acc = np.zeros((power.shape[0], whole, power.shape[2]), np.float64)  # (C, columns, F)
            for k in range(self.pool):
                acc += groups[:, :, k]
            self.frames.extend(np.moveaxis(acc / self.pool, 1, 0))  # columns (C, F)
            i += whole * self.pool
        for k in range(i, power.shape[1]):  # the start of the next column
            self.partial += power[:, k]
            self.partial_count += 1

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

#: The mix's floor lies this far below each band's background (its median level; in the
#: ``absolute`` scale, the recording's median level): the background shows as a faint texture.
BELOW_BACKGROUND_DB = 8.0
#: Up to this far above the background, cells are the background's texture: at most
#: ``TEXTURE`` of the ink. Above it the ink rises steeply, so that a bird a few dB over its
#: band's noise stands out of it.
TEXTURE_DB, TEXTURE = 4.0, 0.12
TRACK_TEXTURE = 0.3  # more in a track's own panel: a track that holds the noise shows it
#: A cell is coloured by its track once it stands this far above its band's background
#: (fully at ``VISIBLE_DB + VISIBLE_RAMP_DB``); the background itself stays grey.
VISIBLE_DB, VISIBLE_RAMP_DB = 7.0, 6.0
GAMMA = 0.6  # < 1 on the rise above the texture: a quiet bird shows before the loud ones saturate
INK = 0.94  # the darkest grey (1 − INK): the loudest cells of the mix


@dataclass(frozen=True)
class LevelScale:
    """How power maps to ink: ``level = (dB − reference − floor) / (top − floor)``, clipped to
    [0, 1] (0 white, 1 the darkest grey or the full track colour).

    ``background``: the reference is each frequency row's median level over time, so a steady
    noise (wind, rumble, a stream) sits at the same light grey whatever its loudness and a bird
    10 dB above its band's background shows as strongly under 60 dB of rumble as in a quiet
    night. The floor lies below the median, so the background shows as a faint texture.
    ``absolute``: one reference for all rows (0 dB), floor and top taken from the recording's
    level distribution, as a classic spectrogram.
    ``background_db`` is each row's median level in both modes: where a cell stands clear of
    it, it takes its track's colour.
    """

    mode: str
    reference_db: np.ndarray  # (F,)
    floor_db: float
    top_db: float
    background_db: np.ndarray | None = None  # (F,); None: reference_db

    def db(self, power: np.ndarray) -> np.ndarray:
        """(..., F, N) power → dB."""
        return 10 * np.log10(np.asarray(power, np.float32) + np.float32(1e-12))

    def level(self, power: np.ndarray) -> np.ndarray:
        """(..., F, N) power → (..., F, N) strength in [0, 1], linear in dB."""
        return self._level(self.db(power))

    def _level(self, db: np.ndarray) -> np.ndarray:
        ref = np.asarray(self.reference_db, np.float32)[:, None]
        return np.clip((db - ref - self.floor_db) / max(self.top_db - self.floor_db, 1e-6), 0, 1)

    def _background(self) -> np.ndarray:
        return np.asarray(self.reference_db if self.background_db is None else self.background_db, np.float32)

    def ink(self, db: np.ndarray, texture: float = TEXTURE) -> np.ndarray:
        """(..., F, N) dB → how much ink each cell gets, in [0, 1]: up to ``TEXTURE`` for the
        background (from the floor to ``TEXTURE_DB`` above the band's background: ``texture``), then rising
        steeply (``GAMMA``) to 1 at the top of the scale."""
        span = max(self.top_db - self.floor_db, 1e-6)
        knee = (self._background() + TEXTURE_DB - np.asarray(self.reference_db, np.float32) - self.floor_db) / span
        knee = np.clip(knee, 0.02, 0.9)[:, None]
        lvl = self._level(db)
        rise = np.clip((lvl - knee) / (1 - knee), 0, 1) ** GAMMA
        return texture * np.minimum(lvl / knee, 1) + (1 - texture) * rise

    def visibility(self, db: np.ndarray) -> np.ndarray:
        """(..., F, N) dB → how clearly each cell stands above its band's background, in [0, 1]."""
        return np.clip((db - self._background()[:, None] - VISIBLE_DB) / VISIBLE_RAMP_DB, 0, 1)

    def describe(self) -> str:
        what = "dB re. each band's median" if self.mode == "background" else "dB"
        return f"{self.floor_db:+.0f} … {self.top_db:+.0f} {what}"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "floor_db": round(self.floor_db, 2), "top_db": round(self.top_db, 2),
                "describe": self.describe()}


def level_scale(mixture: np.ndarray, mode: str = "background", range_db: float | None = None) -> LevelScale:
    """The scale for a picture of ``mixture`` power (F, N); ``range_db`` fixes top − floor
    (default: from the recording, at most 60 dB in ``absolute``)."""
    if mode not in SCALES:
        raise ValueError(f"level scale must be one of {', '.join(SCALES)}, not {mode!r}")
    db = 10 * np.log10(np.asarray(mixture, np.float64) + 1e-12)
    median = np.median(db, axis=1) if db.size else np.zeros(db.shape[0])  # (F,)
    if mode == "background":
        # rows the recording hardly reaches (above an anti-alias filter's edge) are not lifted
        reference = np.maximum(median, np.percentile(median, 10) - 10.0) if median.size else median
        rel = db - reference[:, None]
        floor = -BELOW_BACKGROUND_DB
        top = max(float(np.percentile(rel, 99.8)) if rel.size else 0.0, 18.0)
        if range_db is not None:
            top = floor + range_db
        return LevelScale(mode, reference, floor, top, reference)
    reference = np.zeros(db.shape[0])
    top = float(np.percentile(db, 99.7)) if db.size else 0.0
    floor = max(float(np.median(db)) - BELOW_BACKGROUND_DB, top - 60.0) if range_db is None else top - range_db
    return LevelScale(mode, reference, floor, top, median)


def _rgb(colour: str) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.array(to_rgb(colour), np.float32)


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


def _tinted(colour: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """(F, N) ink in [0, 1] → (F, N, 3): white at 0, ``colour`` at 0.75, a darker shade of it at 1."""
    s = ink[..., None]
    shade = colour * (1 - 0.45 * np.clip((s - 0.75) / 0.25, 0, 1))
    return 1 - np.minimum(s / 0.75, 1) * (1 - shade)


def combined_rgb(mixture: np.ndarray, sources: np.ndarray, scale: LevelScale,
                 colours: list[str] | None = None) -> np.ndarray:
    """The paper's Figure 1 as an image: the mix (F, N) as a grey spectrogram (light background
    texture, louder = darker), each cell coloured by the track of ``sources`` ((M, F, N)) that
    holds most of it: hue = that track's colour, strength = its share of the cell × how clearly
    the cell stands above its band's background. The background stays grey, and so does a cell
    the tracks share evenly. ``colours``: one per source (default :func:`track_colour`).
    Returns (F, N, 3) float32 RGB in [0, 1], row 0 the lowest frequency."""
    mix_db = scale.db(mixture)
    ink = scale.ink(mix_db)
    grey = (1.0 - INK * ink)[..., None]
    m_count = sources.shape[0]
    if m_count == 0:
        return np.repeat(grey, 3, axis=-1).astype(np.float32)
    total = np.zeros(mixture.shape, np.float32)
    loud = np.zeros(mixture.shape, np.float32)
    winner = np.zeros(mixture.shape, np.intp)
    for m in range(m_count):  # one source at a time: no (M, F, N) temporaries
        s = np.asarray(sources[m], np.float32)
        total += s
        winner[s > loud] = m
        np.maximum(loud, s, out=loud)
    share = loud / np.maximum(total, np.float32(1e-30))  # 1/M … 1 (0 where everything is silent)
    dominance = np.clip((share - 1 / m_count) / (1 - 1 / m_count), 0, 1) if m_count > 1 else share
    alpha = (np.sqrt(dominance) * scale.visibility(mix_db))[..., None]
    palette = np.stack([_rgb(c) for c in (colours or [track_colour(m) for m in range(m_count)])])
    # the winner's colour at the cell's loudness: at least its plain colour, darker when loud
    tint = _tinted(palette[winner], np.maximum(ink, 0.75)[..., None][..., 0])
    return (grey * (1 - alpha) + tint * alpha).astype(np.float32)


def track_rgb(power: np.ndarray, colour: str, scale: LevelScale) -> np.ndarray:
    """One track's own spectrogram (F, N) in its colour, on the mix's scale: white where it holds
    nothing, a light texture of its colour where it holds the background (a noise track shows
    as noise), its colour where it is loud. Returns (F, N, 3) float32 RGB in [0, 1]."""
    return _tinted(_rgb(colour), scale.ink(scale.db(power), TRACK_TEXTURE)).astype(np.float32)


def legend_labels(levels_db: list[float], names: list[str] | None = None) -> list[str]:
    """``track k (−34.0 dB)``: each source's level relative to the mixture, as in separation.json."""
    names = names or [f"track {k + 1}" for k in range(len(levels_db))]
    return [f"{n} ({lv:+.1f} dB)" for n, lv in zip(names, levels_db)]


def _mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_rows(freqs: np.ndarray, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pooling from linear STFT bins ``freqs`` (F,) onto ``rows`` bands equally spaced in mel
    between ``freqs[0]`` and ``freqs[-1]``: ((rows, F) weights, each row the mean of the bins in
    its band or the nearest bin where the band is narrower than one; (rows + 1,) band edges in
    mel). The low frequencies, where wind, rumble and engines live, get room."""
    edges = np.linspace(_mel(freqs[0]), _mel(freqs[-1]), rows + 1)
    hz = _hz(edges)
    weights = np.zeros((rows, len(freqs)), np.float32)
    for r in range(rows):
        inside = (freqs >= hz[r]) & (freqs < hz[r + 1])
        if inside.any():
            weights[r, inside] = 1.0 / inside.sum()
        else:
            weights[r, np.abs(freqs - 0.5 * (hz[r] + hz[r + 1])).argmin()] = 1.0
    return weights, edges


def plot_separation(mixture: np.ndarray, sources: np.ndarray, times: np.ndarray, freqs: np.ndarray, path: str | Path,
                    title: str = "", levels_db: list[float] | None = None, scale: str = "background",
                    frequency: str = "mel") -> dict:
    """The mix's spectrogram (power (F, N)) in greys with each cell coloured by the source (of
    ``sources``, (M, F, N)) that holds most of it (:func:`combined_rgb`), and below it one panel
    per source, its own spectrogram in its colour (:func:`track_rgb`), all on one
    :class:`LevelScale`, on a mel (``frequency="mel"``) or linear frequency axis.
    ``levels_db`` are the legend's levels (separation.json's ``level_db``); without them they
    are measured here. Writes a PNG atomically and returns the plot area in pixels (x0, x1,
    y0, y1 from the top-left, spanning every panel) for the video's playhead, and the legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if frequency not in ("mel", "linear"):
        raise ValueError(f"frequency must be 'mel' or 'linear', not {frequency!r}")
    m_count = sources.shape[0]
    if levels_db is None:
        total = float(np.sum(mixture, dtype=np.float64))
        levels_db = [float(10 * np.log10(float(np.sum(s, dtype=np.float64)) / (total + 1e-20) + 1e-20))
                     for s in sources]
    labels = legend_labels(levels_db)
    step = times[1] - times[0] if len(times) > 1 else 2 * float(times[0])  # one column: from 0 to twice its centre
    t0, t1 = max(0.0, times[0] - step / 2), max(times[-1] + step / 2, times[0] + 1e-3)
    if frequency == "mel" and len(freqs) > 8:
        weights, edges = mel_rows(freqs, min(256, len(freqs)))
        mixture = weights @ np.asarray(mixture, np.float32)
        sources = np.stack([weights @ np.asarray(s, np.float32) for s in sources]) if m_count else \
            np.zeros((0,) + mixture.shape, np.float32)
        y0, y1 = float(edges[0]), float(edges[-1])
        top_khz = freqs[-1] / 1000
        ticks = [f for f in (0, 0.5, 1, 2, 4, 8, 16) if f <= top_khz * 1.001]
        positions, tick_labels = [float(_mel(f * 1000)) for f in ticks], [f"{f:g}" for f in ticks]
        few = [(p, t) for p, t in zip(positions, tick_labels) if t in ("1", "4", "16") or p == positions[-1]]
    else:
        y0, y1 = freqs[0] / 1000, freqs[-1] / 1000
        positions = list(np.arange(0, y1 + 1e-9, 2 if y1 <= 16 else 4))
        tick_labels = [f"{p:g}" for p in positions]
        few = [(0.0, "0"), (float(round(y1 / 2)), f"{round(y1 / 2):g}")]
    lv = level_scale(mixture, scale)
    extent = [t0, t1, y0, y1]

    heights = [4.0] + [1.1] * m_count
    fig, axes = plt.subplots(1 + m_count, 1, figsize=(14, 1.3 + sum(heights)), dpi=100, sharex=True,
                             gridspec_kw={"height_ratios": heights, "hspace": 0.08}, squeeze=False)
    axes = axes[:, 0]
    ax = axes[0]
    ax.imshow(combined_rgb(mixture, sources, lv), origin="lower", aspect="auto", extent=extent,
              interpolation="nearest")
    if m_count:
        ax.legend(handles=[Patch(color=track_colour(m), label=labels[m]) for m in range(m_count)],
                  loc="upper left", bbox_to_anchor=(1.003, 1.0), borderaxespad=0, fontsize=9, framealpha=1,
                  title="track: level\nre. the mix", title_fontsize=8)
    ax.set_yticks(positions, tick_labels)
    ax.set_ylabel("frequency (kHz)")
    ax.set_title(f"{title}\n" if title else "", fontsize=10, loc="left")
    ax.text(1.0, 1.01, f"grey: the mix ({lv.describe()}); colour: the track holding most of each cell",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
    for m in range(m_count):
        a = axes[1 + m]
        a.imshow(track_rgb(sources[m], track_colour(m), lv), origin="lower", aspect="auto", extent=extent,
                 interpolation="nearest")
        a.text(0.005, 0.93, labels[m], transform=a.transAxes, va="top", fontsize=8,
               bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": track_colour(m), "pad": 2})
        a.set_yticks([p for p, _ in few], [t for _, t in few])
    axes[-1].set_xlabel("time (s)")
    fig.subplots_adjust(left=0.045, right=0.87, top=1 - 0.75 / (1.3 + sum(heights)),
                        bottom=0.5 / (1.3 + sum(heights)))
    try:
        with files.atomic(path) as tmp:
            fig.savefig(tmp, format="png")
        fig.canvas.draw()
        top, bottom = axes[0].get_window_extent(), axes[-1].get_window_extent()
        height = fig.canvas.get_width_height()[1]
        area = {"x0": top.x0, "x1": top.x1, "y0": height - top.y1, "y1": height - bottom.y0,
                "t0": t0, "t1": t1, "legend": labels, "scale": lv.to_dict()}
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
