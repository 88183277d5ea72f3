"""Pictures of a separation: the mixture's spectrogram with each source drawn over it in
its own colour (the paper's Figure 1), and a video of it with a moving playhead.

Spectrograms are accumulated while the audio streams past (:class:`SpectrogramAccumulator`),
pooled in time so that an hour-long file still makes a picture of bounded size.
"""
from __future__ import annotations

import math
import shutil
import subprocess
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


def plot_separation(mixture: np.ndarray, sources: np.ndarray, times: np.ndarray, freqs: np.ndarray, path: str | Path,
                    title: str = "", dynamic_range_db: float = 60.0) -> dict:
    """Mixture power (F, N) in grey with sources (M, F, N) over it, each bin coloured by the
    source that dominates it, opaque where that source is loud. Writes a PNG atomically and
    returns the plot area in pixels (x0, x1, y0, y1 from the top-left) for the video's playhead.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    eps = 1e-12
    mix_db = 10 * np.log10(mixture + eps)
    # Scale to the recording, not to its loudest bin (often low-frequency rumble): the floor is
    # the median bin, the top a high percentile, at most ``dynamic_range_db`` apart.
    top = float(np.percentile(mix_db, 99.7))
    floor = max(float(np.median(mix_db)), top - dynamic_range_db)
    step = times[1] - times[0] if len(times) > 1 else 0.0
    extent = [max(0.0, times[0] - step / 2), times[-1] + step / 2, freqs[0] / 1000, freqs[-1] / 1000]

    fig, ax = plt.subplots(figsize=(14, 5.5), dpi=100)
    ax.imshow(np.clip(mix_db, floor, top), origin="lower", aspect="auto", extent=extent, cmap="Greys", alpha=0.6)
    src_db = 10 * np.log10(sources + eps)  # (M, F, N)
    winner = src_db.argmax(axis=0)  # (F, N): the source that dominates each bin
    loud = np.take_along_axis(src_db, winner[None], 0)[0]
    share = np.take_along_axis(sources, winner[None], 0)[0] / (sources.sum(axis=0) + eps)  # 1/M … 1
    m_count = sources.shape[0]
    dominance = np.clip((share - 1 / m_count) / (1 - 1 / m_count), 0, 1)
    level = np.clip((loud - floor - 3.0) / max(top - floor - 3.0, 1e-6), 0, 1)
    alpha = level * (0.35 + 0.65 * dominance)
    rgba = np.zeros(winner.shape + (4,))
    for m in range(m_count):
        rgba[winner == m, :3] = to_rgb(COLOURS[m % len(COLOURS)])
    rgba[..., 3] = alpha
    ax.imshow(rgba, origin="lower", aspect="auto", extent=extent, interpolation="nearest")
    energy = 10 * np.log10(sources.sum(axis=(1, 2)) / (mixture.sum() + eps) + eps)
    ax.legend(handles=[Patch(color=COLOURS[m % len(COLOURS)], label=f"source {m + 1} ({energy[m]:+.1f} dB)")
                       for m in range(sources.shape[0])], loc="upper right", fontsize=9, framealpha=0.85)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (kHz)")
    ax.set_title(title)
    fig.tight_layout()
    try:
        with files.atomic(path) as tmp:
            fig.savefig(tmp, format="png")
        fig.canvas.draw()
        bbox = ax.get_window_extent()
        height = fig.canvas.get_width_height()[1]
        area = {"x0": bbox.x0, "x1": bbox.x1, "y0": height - bbox.y1, "y1": height - bbox.y0,
                "t0": extent[0], "t1": extent[1]}
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
