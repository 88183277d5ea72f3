"""What the page shows and downloads: spectrogram images of a finished separation (the mix
with each track's energy in its colour, and each track on its own, all on one level scale),
audio the browser can play, and tracks converted for download. Derived files are kept in a
cache folder (written atomically, remade when their source changes).
"""
from __future__ import annotations

import hashlib
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from birdsep import audio, files
from birdsep.plots import (HIGH_BAND_COLOUR, LevelScale, combined_rgb, level_scale, png_bytes, track_colour,
                           track_rgb)

OVERVIEW_COLUMNS = 3000  # columns of the whole-recording picture (pooled in time beyond)
OVERVIEWS_KEPT = 8
DETAIL_MAX_SECONDS = 600.0  # longer views are cut from the overview, not read again
BROWSER_PLAYS = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus"}  # played as they are; others are converted


def track_ids(result: dict) -> list[str]:
    """``source_1 … source_M`` then ``high_band`` if there is one: the tracks' names in the page
    and in the detections' ``channel`` column."""
    return [Path(s["file"]).stem for s in result["sources"]] + (["high_band"] if result.get("high_band") else [])


def track_colours(result: dict) -> list[str]:
    m = len(result["sources"])
    return [track_colour(k) for k in range(m)] + ([HIGH_BAND_COLOUR] if result.get("high_band") else [])


class Media:
    def __init__(self, cache: Path):
        self.cache = cache
        self._overviews: OrderedDict[tuple, tuple] = OrderedDict()
        self._computing: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ pictures
    def overview(self, folder: Path, result: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(power (C, F, N), times, freqs) of the whole recording: mix, tracks, high band."""
        from birdsep.pipeline import RESULT_NAME, track_spectrogram

        key = (str(folder), (folder / RESULT_NAME).stat().st_mtime_ns)
        with self._lock:
            computing = self._computing.setdefault(key, threading.Lock())
        with computing:  # the page asks for every panel at once: one reads the tracks, the others wait
            with self._lock:
                if key in self._overviews:
                    self._overviews.move_to_end(key)
                    return self._overviews[key]
            power, times, freqs = track_spectrogram(folder, result, max_columns=OVERVIEW_COLUMNS)
            found = (power.astype(np.float32), times, freqs)
            with self._lock:
                self._overviews[key] = found
                while len(self._overviews) > OVERVIEWS_KEPT:
                    self._overviews.popitem(last=False)
                self._computing.pop(key, None)
        return found

    def scale(self, folder: Path, result: dict, mode: str = "background", range_db: float | None = None) -> LevelScale:
        """One level scale per recording (from its whole mix), shared by every view of it."""
        power = self.overview(folder, result)[0]
        return level_scale(power[0].astype(np.float64), mode, range_db)

    def spectrogram(self, folder: Path, result: dict, view: str = "combined", start: float = 0.0,
                    end: float | None = None, width: int = OVERVIEW_COLUMNS, mode: str = "background",
                    range_db: float | None = None) -> bytes:
        """A PNG of ``view`` (``combined`` or a track id) between ``start`` and ``end`` seconds,
        about ``width`` columns wide."""
        from birdsep.pipeline import track_spectrogram

        duration = float(result["duration_s"])
        end = duration if end is None else min(end, duration)
        start = max(0.0, min(start, end))
        scale = self.scale(folder, result, mode, range_db)
        power, times, _ = self.overview(folder, result)
        per_second = power.shape[-1] / max(duration, 1e-9)
        if (end - start) * per_second < width * 0.8 and end - start < min(0.9 * duration, DETAIL_MAX_SECONDS):
            power, times, _ = track_spectrogram(folder, result, start, end, max_columns=max(16, width))
        else:  # the overview has columns enough: cut it
            keep = (times >= start) & (times <= end)
            power = power[..., keep] if keep.any() else power[..., :1]
        ids, colours = track_ids(result), track_colours(result)
        if view == "combined":
            rgb = combined_rgb(power[0], power[1:], scale, colours)
        else:
            k = ids.index(view)  # the caller checked the name
            rgb = track_rgb(power[1 + k], colours[k], scale)
        return png_bytes(rgb)

    # ------------------------------------------------------------------ audio
    def playable(self, path: Path) -> Path:
        """``path`` if a browser plays its format, else a FLAC copy of it."""
        if path.suffix.lower() in BROWSER_PLAYS:
            return path
        return self._derived(path, ".flac", lambda dst: audio.transcode(path, dst))

    def converted(self, path: Path, fmt: str) -> Path:
        """A track as ``wav`` or ``flac``: the file itself when it is in that format, else a 24-bit copy."""
        if path.suffix.lower() == f".{fmt}":
            return path
        return self._derived(path, f".{fmt}", lambda dst: audio.transcode(path, dst))

    def zipped(self, tracks: list[Path], fmt: str, stem: str) -> Path:
        """All tracks in one zip, as ``fmt``."""
        parts = [self.converted(f, fmt) for f in tracks]

        def make(dst: Path) -> None:
            with files.atomic(dst) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
                for src, p in zip(tracks, parts):
                    z.write(p, f"{stem}/{src.stem}.{fmt}")

        return self._derived(tracks[0].parent, f".{fmt}.zip", make, sources=parts)

    def _derived(self, src: Path, suffix: str, make, sources: list[Path] | None = None) -> Path:
        stats = [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (sources or [src])]
        name = hashlib.sha1(repr(stats).encode()).hexdigest()[:20] + suffix
        dst = self.cache / name
        if not dst.is_file():
            self.cache.mkdir(parents=True, exist_ok=True)
            make(dst)
        return dst
