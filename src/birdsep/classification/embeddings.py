"""BirdNET V2.4 embeddings of activity windows, of the mix and of its separated tracks, cached on disk.

Shapes: N windows, T samples (3 s at 48 kHz = 144,000), D = 1024 embedding, K activity windows
of one recording, M separated tracks.

- :class:`BirdNETEmbedder`: the same ``.tflite`` model :class:`birdsep.backends.BirdNET` runs,
  read one layer before its classifier: the global average pool (``GLOBAL_AVG_POOL``, (N, 1024)),
  the input of the final fully connected layer whose output is the 6,522 logits. The tensor is
  found from the interpreter's op list (the input of the op producing the model's output), not
  by a hard-coded index, and every batch is checked: its logits must equal ``emb @ Wᵀ + b`` with
  the dense layer's own weights, so a model whose layout differs fails loudly instead of giving
  wrong embeddings. The interpreter runs without LiteRT's default XNNPACK delegate, which fuses
  the last layers and leaves the intermediate tensor unreadable (same speed on this model).
- :func:`embed_file`: the paper's activity windows (§2.1, :mod:`birdsep.classification.activity`)
  with BirdNET's 3 s, up to ``max_windows`` per recording; the mix of each and, with a
  separator, each of its M tracks (the window separated on its own at the separator's rate,
  resampled back to 48 kHz), embedded; ``track_input`` (a
  :class:`birdsep.combination.TrackInput`) makes each track what the classifier hears at
  classification (``classify --mode mix+separated`` hears the mixture 15 dB under each track),
  so that heads are trained on the tracks as they will be scored.
- :class:`EmbeddingCache`: ``.npz`` files keyed by the sha256 of the file's bytes, the
  embedding model's digest, the window settings and (tracks only) the separator's weights
  digest and the track input); the mix and the tracks are separate entries, so a run without tracks reuses the mix
  embeddings of one with tracks. A damaged entry is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from birdsep import audio, combination, files
from birdsep.classification import activity
from birdsep.errors import UsageError


SAMPLE_RATE = 48000  # BirdNET's input rate
WINDOW_SECONDS = 3.0  # BirdNET's input length; also the activity windows' length here
EMBEDDING_DIM = 1024
#: A window whose peak is below this is digital silence: no usable window.
SILENCE_PEAK = 1e-5
#: Bump when what is cached changes meaning (window cutting, separation of a window, …).
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$BIRDSEP_CACHE/embeddings`` (default ``~/.cache/birdsep/embeddings``)."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = os.environ.get("BIRDSEP_CACHE") or xdg / "birdsep"
    return Path(root) / "embeddings"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (computed once per path, size and mtime in this process)."""
    return files.sha256(path)


# ------------------------------------------------------------------------------ the embedder


class BirdNETEmbedder:
    """BirdNET V2.4's 1024-d embedding (the input of its classifier layer) through ai-edge-litert."""

    name = "birdnet-v2.4"
    sample_rate = SAMPLE_RATE
    window_seconds = WINDOW_SECONDS
    dim = EMBEDDING_DIM

    def __init__(self, threads: int = 1, batch_size: int = 16):
        from birdsep.litert import BIRDNET_HINT, Batches, birdnet_files, quiet_stderr

        model, _ = birdnet_files()
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise UsageError(BIRDNET_HINT) from None
        self.model_path = model
        self.batch_size = batch_size
        with quiet_stderr():
            self._it = Interpreter(model_path=str(model), num_threads=max(1, threads),
                                   experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self._input = self._it.get_input_details()[0]["index"]
        self._output = self._it.get_output_details()[0]["index"]
        self._embedding, weight, bias = self._classifier_layer()
        self._batches = Batches(self._it, self._input, batch_size)
        with quiet_stderr():
            self._it.allocate_tensors()
        self.weight = self._it.get_tensor(weight).astype(np.float32)  # (L, D) the classifier's dense weights
        self.bias = self._it.get_tensor(bias).astype(np.float32)  # (L,)
        if self.weight.shape[1] != EMBEDDING_DIM:
            raise RuntimeError(f"{model}: BirdNET's classifier layer takes {self.weight.shape[1]} features, "
                               f"not {EMBEDDING_DIM}")

    def _classifier_layer(self) -> tuple[int, int, int]:
        """Tensor indices (embedding (N, D), dense weights (L, D), bias (L,)) of the op that
        produces the model's output: a FULLY_CONNECTED op, whose inputs are (input, weights, bias)."""
        for op in self._it._get_ops_details():
            if self._output in [int(i) for i in op["outputs"]]:
                inputs = [int(i) for i in op["inputs"]]
                if op["op_name"] == "FULLY_CONNECTED" and len(inputs) == 3 and min(inputs) >= 0:
                    return inputs[0], inputs[1], inputs[2]
                break
        raise RuntimeError(f"{self.model_path}: cannot find BirdNET's classifier layer (its model layout changed?)")

    @property
    def digest(self) -> str:
        """What tells two embedding models apart in the cache: the name and the .tflite's sha256."""
        return f"{self.name}:{file_sha256(self.model_path)}"

    def embed_and_logits(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, T) audio at 48 kHz, T = 144,000 → (embeddings (N, D), BirdNET's logits (N, L))."""
        from birdsep.litert import birdnet_windows

        x = birdnet_windows(windows, int(round(self.window_seconds * self.sample_rate)))
        emb = np.zeros((len(x), EMBEDDING_DIM), np.float32)
        logits = np.zeros((len(x), len(self.bias)), np.float32)

        def read(a: int, b: int) -> None:
            e = self._it.get_tensor(self._embedding).copy()  # (b − a, D)
            z = self._it.get_tensor(self._output)  # (b − a, L)
            if not np.allclose(e @ self.weight.T + self.bias, z, atol=1e-3, rtol=1e-3):
                raise RuntimeError(f"{self.model_path}: the tensor read as the embedding is not the input of the "
                                   "classifier layer (its logits are not W·e + b)")
            emb[a:b], logits[a:b] = e, z

        self._batches.run(x, read)
        return emb, logits

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """(N, T) audio at 48 kHz → (N, D) embeddings."""
        return self.embed_and_logits(windows)[0]


# ------------------------------------------------------------------------------ the cache


class EmbeddingCache:
    """``.npz`` entries under ``folder/<key[:2]>/<key>.npz``, written atomically; counts hits and misses."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(**parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        if self.folder is not None:
            f = self._path(key)
            if f.is_file():
                try:
                    with np.load(f, allow_pickle=False) as z:
                        found = {k: z[k] for k in z.files}
                    self.hits += 1
                    return found
                except (OSError, ValueError, EOFError):
                    f.unlink(missing_ok=True)  # damaged: made again
        self.misses += 1
        return None

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        if self.folder is None:
            return
        f = self._path(key)
        f.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic(f) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


# ------------------------------------------------------------------------------ one recording


@dataclass
class FileEmbeddings:
    """One recording: ``spans`` (K, 2) seconds, ``mix`` (K, D), ``tracks`` (K, M, D) or None."""

    spans: np.ndarray
    mix: np.ndarray
    tracks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.mix)


@dataclass(frozen=True)
class Separation:
    """A loaded separator and its weights' sha256 (the cache key)."""

    model: object
    digest: str

    @classmethod
    def load(cls, name: str | None) -> "Separation":
        from birdsep.pretrained import load_model, resolve, weights_sha256

        folder = resolve(name)
        return cls(load_model(folder), weights_sha256(folder))


def activity_windows(x: np.ndarray, max_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """(T,) at 48 kHz → (spans (K, 2) s, windows (K, 144,000)) of the paper's activity detector
    with BirdNET's 3 s, zero-padded; digital silence dropped (K may be 0)."""
    n = int(round(WINDOW_SECONDS * SAMPLE_RATE))
    wins = activity.detect_activity(x, SAMPLE_RATE, WINDOW_SECONDS, max_windows)
    spans, out = [], []
    for w in wins:
        seg = x[int(round(w.start * SAMPLE_RATE)) :][:n]
        if len(seg) == 0 or np.max(np.abs(seg)) < SILENCE_PEAK:
            continue
        out.append(np.pad(seg, (0, n - len(seg))))
        spans.append((w.start, w.end))
    return np.asarray(spans, np.float64).reshape(-1, 2), np.asarray(out, np.float32).reshape(-1, n)


def separate_windows(separation: Separation, windows: np.ndarray) -> np.ndarray:
    """(K, T) at 48 kHz → (K, M, T): each window separated on its own at the separator's rate."""
    import torch

    from birdsep.separation.apply import separate_array

    model = separation.model
    sr = model.config.sample_rate
    out = np.zeros((len(windows), model.config.num_sources, windows.shape[1]), np.float32)
    with torch.inference_mode():
        for k, w in enumerate(windows):
            tracks = audio.resample(separate_array(model, audio.resample(w, SAMPLE_RATE, sr), sr), sr, SAMPLE_RATE)
            length = min(tracks.shape[1], windows.shape[1])
            out[k, :, :length] = tracks[:, :length]
    return out


def track_inputs(track_input, tracks: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(K, M, T) tracks and their (K, T) windows → (K, M, T) what the classifier hears for each
    track (``track_input``: a :class:`birdsep.combination.TrackInput`; None: the tracks as they are)."""
    if track_input is None or track_input == combination.RAW:
        return tracks
    if track_input.denoise:
        raise ValueError("a denoised input is one per window, not one per track")
    return np.stack([track_input.apply(t, w) for t, w in zip(tracks, windows)]) if len(tracks) else tracks


def embed_file(path: str | os.PathLike, embedder: BirdNETEmbedder, cache: EmbeddingCache, *,
               separation: Separation | None = None, max_windows: int = activity.MAX_WINDOWS,
               track_input=None) -> FileEmbeddings:
    """Embeddings of a recording's activity windows (mix, and tracks with ``separation``, heard
    as ``track_input`` says: :func:`track_inputs`), from the cache when it has them. Raises
    AudioError for a file that cannot be used."""
    sha = file_sha256(path)
    common = dict(version=CACHE_VERSION, file=sha, embedder=embedder.digest, window=WINDOW_SECONDS,
                  max_windows=max_windows, rate=SAMPLE_RATE,
                  detector=[activity.ENERGY_RATE, list(activity.PEAK_WIDTHS_S)], silence=SILENCE_PEAK)
    mix_key = cache.key(kind="mix", **common)
    heard = {} if track_input is None or track_input == combination.RAW else {"input": asdict(track_input)}
    tracks_key = cache.key(kind="tracks", separator=separation.digest, **heard, **common) if separation else None
    mix = cache.get(mix_key)
    tracks = cache.get(tracks_key) if tracks_key else None
    if mix is None or (tracks_key and tracks is None):
        x, _ = audio.load(path, SAMPLE_RATE, min_duration=0.5)
        spans, windows = activity_windows(x, max_windows)
        if mix is None:
            emb = embedder.embed(windows) if len(windows) else np.zeros((0, EMBEDDING_DIM), np.float32)  # (K, D)
            mix = {"spans": spans, "mix": emb}
            cache.put(mix_key, mix)
        if tracks_key and tracks is None:
            m = separation.model.config.num_sources
            if len(windows):
                sep = track_inputs(track_input, separate_windows(separation, windows), windows)  # (K, M, T)
                emb = embedder.embed(sep.reshape(-1, sep.shape[-1])).reshape(len(windows), m, EMBEDDING_DIM)
            else:
                emb = np.zeros((0, m, EMBEDDING_DIM), np.float32)
            tracks = {"spans": spans, "tracks": emb}
            cache.put(tracks_key, tracks)
    return FileEmbeddings(mix["spans"], mix["mix"], tracks["tracks"] if tracks is not None else None)
