"""Long-file separation: overlapping blocks, a smooth cross-fade, and source alignment.

The one place chunked inference lives. Input arrives as a stream of chunks at the model's
rate; output leaves as a stream of finished (M, t) chunks, so memory stays flat however
long the recording. Consecutive blocks overlap by ``overlap`` of their length; in the
overlap the earlier block fades out (cos²) while the later fades in (sin²), weights that
sum to exactly one, so sources still sum to the input. Before the fade, the later block's
sources are reordered to match the earlier block's over the overlap (the permutation of
least squared difference, all permutations scored), so source k keeps one voice
through an hour-long file.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from birdsep import limits, threads
from birdsep.errors import UsageError
from birdsep.separation.engine import engine_for

DEFAULT_BLOCK_SECONDS = 12.0
DEFAULT_OVERLAP = 0.125


@dataclass(frozen=True)
class BlockSettings:
    # 12 s blocks sharing 1.5 s: each second of audio goes through the model 1.14 times
    # (2× with the 6 s / 50 % first shipped), and 1.5 s of overlap is ample for alignment.
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    overlap: float = DEFAULT_OVERLAP  # fraction of a block shared with the next (0 < overlap ≤ 0.5)
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 (resolve "auto" with separation.runtime.resolve first)
    # blocks separated at once on the CPU, each by one thread of its own (None: as many as the
    # process computes with, birdsep.threads.count()); on other devices one at a time
    workers: int | None = None

    def __post_init__(self):
        limits.blocks(self.block_seconds, self.overlap)  # an InvalidValue (a ValueError) outside the bounds
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")

    def block_workers(self) -> int:
        """How many blocks are separated at once: 1 off the CPU."""
        if self.device != "cpu":
            return 1
        return self.workers if self.workers is not None else threads.count()


def fades(length: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade_in, fade_out) of ``length`` samples with fade_in + fade_out = 1 exactly."""
    fade_in = np.sin(0.5 * np.pi * (np.arange(length) + 0.5) / length) ** 2
    return fade_in.astype(np.float32), (1.0 - fade_in).astype(np.float32)


PROFILE_BANDS = 48  # spectral profile resolution for alignment
PROFILE_STRIDE = 4  # frames skipped between those the profile looks at (speed)
PROFILE_DECAY = 0.8  # per block: how long a track remembers what it sounded like
OVERLAP_FLOOR = 0.02  # overlap energy (× the loudest track's) below which continuity stops counting


@functools.lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    return np.hanning(n).astype(np.float32)


def band_power(x: np.ndarray, bands: int = PROFILE_BANDS) -> np.ndarray:
    """(M, T) → (M, bands): power in equal-width frequency bands (a coarse spectral profile)."""
    n = min(512, x.shape[-1] - x.shape[-1] % 2) or 2
    frames = x[:, : x.shape[-1] // n * n].reshape(x.shape[0], -1, n) if x.shape[-1] >= n else x[:, None, :n]
    frames = frames[:, ::PROFILE_STRIDE]  # a 23 ms frame in every 4: a call of 0.1 s still shows
    spec = np.abs(np.fft.rfft(frames * _hann(frames.shape[-1]), axis=-1)) ** 2  # (M, K, n/2+1), float32
    spec = spec.sum(1)
    edges = np.linspace(0, spec.shape[-1], bands + 1).astype(int)
    return np.add.reduceat(spec, edges[:-1], axis=-1)


@functools.lru_cache(maxsize=8)
def _permutations(m: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(m))))  # (m!, m)


def best_permutation(cost: np.ndarray) -> np.ndarray:
    """perm minimising Σ_i cost[i, perm[i]]: every permutation scored at once for M ≤ 8
    (≤ 40 320 rows), SciPy's Hungarian solver beyond (its import alone costs 0.3 s)."""
    m = cost.shape[0]
    if m > 8:
        from scipy.optimize import linear_sum_assignment

        return linear_sum_assignment(cost)[1]
    perms = _permutations(m)
    return perms[np.argmin(cost[np.arange(m), perms].sum(1))]


def align(previous: np.ndarray, current: np.ndarray, profiles: np.ndarray | None = None,
          current_profiles: np.ndarray | None = None) -> np.ndarray:
    """The order of ``current``'s sources that best continues the previous tracks.

    previous, current (M, O): the tracks and the new sources over the overlap. Their
    normalised squared difference (0 = identical, 1 = unrelated) is the main cost, weighted
    down where both are faint (−17 dB or more below the loudest track in the overlap). A voice
    that is silent in the overlap (a bird between two songs) is placed by ``profiles``
    (M, bands), each track's remembered spectrum, against ``current_profiles`` (M, bands),
    the new sources' spectra: cost 1 − cosine similarity of their square roots.
    Returns perm (M,) with current[perm] continuing previous.
    """
    eps = 1e-10
    p_pow = (previous ** 2).sum(-1)[:, None]
    c_pow = (current ** 2).sum(-1)[None, :]
    diff = ((previous[:, None, :] - current[None, :, :]) ** 2).sum(-1)  # (M, M)
    pair = p_pow + c_pow
    # Continuity counts where the pair carries real energy; faint residue (both far below the
    # loudest track in the overlap) says little about who is who.
    loudest = max(float(p_pow.max()), float(c_pow.max()))
    weight = pair / (pair + OVERLAP_FLOOR * loudest + eps)
    cost = weight * diff / (pair + eps) + (1 - weight) * 1.0
    if profiles is not None and current_profiles is not None:
        a = np.sqrt(np.maximum(profiles, 0))
        b = np.sqrt(np.maximum(current_profiles, 0))
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cos = (a @ b.T) / (na[:, None] * nb[None, :] + eps)
        known = (na[:, None] > eps) & (nb[None, :] > eps)
        cost = cost + np.where(known, 1.0 - cos, 0.5)
    return best_permutation(cost)


def run_model(model: torch.nn.Module, block: np.ndarray, settings: BlockSettings) -> np.ndarray:
    """(T,) float32 at the model's rate → (M, T) float32, through the model's fast inference engine.

    Raises :class:`UsageError` naming the model (its folder, where it was loaded from one) when
    its output is not finite: damaged or diverged weights, never tracks of zeros."""
    engine = engine_for(model, settings.precision, settings.device)
    x = torch.from_numpy(np.ascontiguousarray(block)).to(settings.device).unsqueeze(0)  # (1, T)
    y = engine(x)[0].cpu().numpy()  # (M, T)
    if not np.isfinite(y).all():
        name = getattr(model, "source", None) or f"the separator ({type(model).__name__})"
        raise UsageError(f"{name}: the model's output is NaN or infinite (damaged or diverged weights); "
                         "no tracks written")
    return y


def blocks_of(chunks: Iterable[np.ndarray], length: int, hop: int) -> Iterator[tuple[np.ndarray, bool]]:
    """A stream of mono chunks (t,) → its blocks of ``length`` samples, ``hop`` apart, each with
    whether it is the last; the last is shorter where the stream ends inside it. None for an empty stream."""
    source = iter(chunks)
    buf = np.zeros(0, dtype=np.float32)  # input not yet consumed
    exhausted = False
    while True:
        while not exhausted and len(buf) <= length:  # one sample past the block tells "not last"
            try:
                buf = np.concatenate([buf, np.asarray(next(source), dtype=np.float32)])
            except StopIteration:
                exhausted = True
        if len(buf) == 0:
            return
        last = len(buf) <= length
        yield buf[:length], last
        if last:
            return
        buf = buf[hop:]


def _one_thread(model: torch.nn.Module, block: np.ndarray, settings: BlockSettings) -> np.ndarray:
    """:func:`run_model` with PyTorch on one thread (the process's count: :func:`separated_blocks`
    puts it back when the blocks are done)."""
    torch.set_num_threads(1)
    return run_model(model, block, settings)


def separated_blocks(model: torch.nn.Module, blocks: Iterator[tuple[np.ndarray, bool]],
                     settings: BlockSettings) -> Iterator[tuple[np.ndarray, bool]]:
    """(block, last) → (its sources (M, n), last), in order.

    On the CPU, ``settings.block_workers()`` blocks are separated at once, each by one thread
    (two blocks on one core each separate 1.4–1.5× as fast as one block on two, on this project's
    2-core machine: benchmarks/README.md §9), so a block's sources do not depend on the thread
    count. At most two blocks more than the workers are in flight (one more was ~5 % slower on
    an hour). Elsewhere one at a time, in the caller's thread."""
    workers = settings.block_workers()
    if settings.device != "cpu":
        for block, last in blocks:
            yield run_model(model, block, settings), last
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    # PyTorch's thread count is the whole process's (set in a worker, it is the caller's too,
    # measured): the caller's is put back once no block runs
    threads_before = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="birdsep-block")
    running: deque = deque()
    try:
        for block, last in blocks:
            running.append((pool.submit(_one_thread, model, block, settings), last))
            if len(running) > workers + 1:  # the workers stay busy while the caller takes this one
                future, done = running.popleft()
                yield future.result(), done
        while running:
            future, done = running.popleft()
            yield future.result(), done
    finally:
        for future, _ in running:
            future.cancel()
        pool.shutdown(wait=True)
        torch.set_num_threads(threads_before)


def separate_stream(model: torch.nn.Module, chunks: Iterable[np.ndarray], sample_rate: int,
                    settings: BlockSettings = BlockSettings()) -> Iterator[np.ndarray]:
    """Separate a stream of mono chunks (t,) at ``sample_rate`` into finished source chunks (M, t').

    The concatenated output has exactly the input's length and sums to it (up to float error).
    """
    length = max(2, int(round(settings.block_seconds * sample_rate)))
    overlap = max(1, int(round(settings.overlap * length)))
    hop = length - overlap
    fade_in, fade_out = fades(overlap)

    with contextlib.closing(separated_blocks(model, blocks_of(chunks, length, hop), settings)) as results:
        yield from _joined(results, overlap, fade_in, fade_out)


def _joined(results: Iterator[tuple[np.ndarray, bool]], overlap: int, fade_in: np.ndarray,
            fade_out: np.ndarray) -> Iterator[np.ndarray]:
    """Separated blocks (M, n) in order → finished chunks: each block's sources aligned to the
    block before over their overlap, then cross-faded into it."""
    pending = None  # (M, overlap) faded-out tail of the previous block
    previous_tail = None  # (M, overlap) previous block's sources over the overlap, unfaded
    profiles = None  # (M, bands) each track's decaying spectral profile
    first = True
    for sources, last in results:  # (M, n)
        n = sources.shape[1]
        block_profiles = band_power(sources)
        if previous_tail is not None:
            perm = align(previous_tail, sources[:, :overlap], profiles, block_profiles)
            sources, block_profiles = sources[perm], block_profiles[perm]
        profiles = block_profiles if profiles is None else PROFILE_DECAY * profiles + block_profiles
        out = sources.copy()
        if not first:
            out[:, :overlap] *= fade_in
            out[:, :overlap] += pending
        if last:
            yield out
            return
        out[:, n - overlap:] *= fade_out
        yield out[:, : n - overlap]
        pending = out[:, n - overlap:]
        previous_tail = sources[:, n - overlap:]
        first = False


def separate_array(model: torch.nn.Module, mixture: np.ndarray, sample_rate: int,
                   settings: BlockSettings = BlockSettings()) -> np.ndarray:
    """(T,) at the model's rate → (M, T), through the same blocks as a long file."""
    parts = list(separate_stream(model, [mixture], sample_rate, settings))
    return np.concatenate(parts, axis=1) if parts else np.zeros((model.config.num_sources, 0), np.float32)
