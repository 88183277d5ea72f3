"""From the classifier's scores on the mix and on the separated tracks to one score per species
and window (paper §2.5; ``birdsep classify --mode``).

Two things are chosen, together called a :class:`Rule`:

- **what the classifier hears for each track** (:class:`TrackInput`): the separated source as
  it is, or with the recording's own mixture added back at a low level (so that the classifier
  hears the recording's background rather than separation artefacts), and/or with the *high
  band* (the input minus the sum of the sources: what lies above the separator's band, e.g.
  11–24 kHz for a 22.05 kHz separator) so that tracks are full band;
- **how the scores are pooled**: which tracks count in a window (drop tracks far below the
  others; use tracks only where the separator finds more than one active source; let a track
  speak only for its own top species), an optional affine map of track logits (calibration),
  and the pooling itself: ``max`` (the paper: the maximum over the mix and the tracks) or
  ``mean`` (the mean of the mix's logit and the best track's).

Why :data:`DEFAULT` is the default is in ``docs/classify.md`` (``benchmarks/table2_lodo.py``,
rules chosen leave-one-dataset-out): the mix's evidence is a floor that the tracks may only raise
(``pool="gain"``), with every track heard with the mixture added 15 dB under its own level. The
other pools (``mean``, ``floor``) and track inputs stay for the benchmarks and for ``Rule`` users.
Scores are probabilities in [0, 1]; logits are clipped at ±15 (as the BirdNET backend clips its own).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from birdsep.errors import UsageError

LOGIT_CLIP = 15.0
#: frame (samples at the classifier's rate: ~21 ms at 48 kHz) over which a track's noise floor is measured
FLOOR_FRAME = 1024


@dataclass(frozen=True)
class TrackInput:
    """What the classifier hears for a separated track.

    ``mix_db``: the mixture added to every track at this level (dB; None: not added): relative
    to the mixture itself, or, with ``under_track``, relative to each track's own level in the
    window (so that a quiet track is not drowned by the mixture added to it; BirdNET normalises
    each window, so only this ratio matters to it).
    ``high_band``: the band above the separator's (input − Σ sources) added to every track.
    ``complement``: instead of each track, the mixture with that track taken out (input − track m:
    the recording without its recorder noise, or without a louder bird; a bird split over two
    tracks stays whole in the others' complements). Full band by construction.
    ``denoise``: one input instead of M: the mixture without one of its tracks in the window,
    chosen by ``remove``: ``loudest`` (most often the recorder's noise, else a dominant bird that
    masks quieter ones) or ``floor`` (the track with the highest noise floor: the largest 20th
    percentile of its power over ~21 ms frames, i.e. the track that stays loud between calls —
    the recorder's noise, insects, rain — rather than a calling bird) or ``floor-steady`` (of
    that track only its steady part: in each frequency bin its STFT magnitude is lowered by its
    median over the window, twice (spectral subtraction), so a call the separator left in the
    noise track stays in the mixture).
    """

    mix_db: float | None = None
    high_band: bool = False
    under_track: bool = False
    complement: bool = False
    denoise: bool = False
    remove: str = "loudest"

    def __post_init__(self):
        if self.remove not in REMOVALS:
            raise ValueError(f"remove must be one of {', '.join(REMOVALS)}, not {self.remove!r}")

    @property
    def name(self) -> str:
        if self.denoise:
            return "mix without its " + REMOVALS[self.remove]
        if self.complement:
            return "mix minus each track"
        parts = ["tracks"] + (["high band"] if self.high_band else [])
        if self.mix_db is not None:
            parts.append(f"mix {self.mix_db:+g} dB" + (" under each track" if self.under_track else ""))
        return " + ".join(parts)

    def apply(self, tracks: np.ndarray, mix: np.ndarray) -> np.ndarray:
        """(M, T) sources and the (T,) mixture of one classifier window, both at the
        classifier's rate → (M, T) inputs ((1, T) with ``denoise``)."""
        if self.denoise:
            noise = tracks[self.removed(tracks)]
            if self.remove == "floor-steady":
                noise = steady_part(noise)
            return np.asarray(mix - noise, dtype=np.float32)[None]
        if self.complement:
            return np.asarray(mix[None] - tracks, dtype=np.float32)
        y = tracks
        if self.high_band:
            y = y + (mix - tracks.sum(0))[None]
        if self.mix_db is not None:
            gain = np.full((len(tracks), 1), 10.0 ** (self.mix_db / 20.0))  # (M, 1)
            if self.under_track:
                rms = lambda a: np.sqrt(np.mean(np.square(a, dtype=np.float64), axis=-1))  # noqa: E731
                gain *= (rms(y) / max(rms(mix), 1e-12))[:, None]
            y = y + gain * mix[None]
        return np.asarray(y, dtype=np.float32)


    def removed(self, tracks: np.ndarray) -> int:
        """(M, T) → the index of the track that ``denoise`` takes out of the mixture."""
        t = tracks.astype(np.float64)
        if self.remove == "loudest":
            return int(np.argmax(np.einsum("mt,mt->m", t, t)))  # "floor" and "floor-steady" below
        frame = max(1, min(FLOOR_FRAME, t.shape[1]))
        n = t.shape[1] // frame
        power = np.square(t[:, : n * frame]).reshape(len(t), n, frame).mean(-1)  # (M, n frames)
        return int(np.argmax(np.percentile(power, 20, axis=1)))

    def rows(self, sources: int) -> int:
        """How many inputs :meth:`apply` makes from ``sources`` tracks."""
        return 1 if self.denoise else sources


def steady_part(x: np.ndarray, n_fft: int = FLOOR_FRAME, over: float = 2.0) -> np.ndarray:
    """(T,) → (T,): the part of ``x`` that is there all the time. In each frequency bin of its
    STFT (Hann, ``n_fft``, ¾ overlap) the magnitude is limited to ``over`` × the bin's median
    over the frames (what spectral subtraction takes away; 2× the median is above 94 % of a
    steady noise's frames), phases kept; ``x`` minus it holds the calls that rise above the floor."""
    from scipy.signal import istft, stft

    x = np.asarray(x, np.float64)
    n = min(n_fft, len(x))
    if n < 16:
        return x.copy()
    _, _, z = stft(x, nperseg=n, noverlap=3 * n // 4)  # (F, frames)
    mag = np.abs(z)
    floor = over * np.median(mag, axis=1, keepdims=True)  # (F, 1)
    _, y = istft(z * (np.minimum(mag, floor) / np.maximum(mag, 1e-20)), nperseg=n, noverlap=3 * n // 4)
    return np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]


#: ``TrackInput.remove`` → what the denoised input is called
REMOVALS = {"loudest": "loudest track", "floor": "noise-floor track", "floor-steady": "noise-floor track's steady part"}

RAW = TrackInput()
#: the mixture without its loudest track (``Rule.denoised`` by default)
DENOISED = TrackInput(denoise=True)
#: the mixture without the track that holds its noise floor
DENOISED_FLOOR = TrackInput(denoise=True, remove="floor")
#: the mixture without the steady part of that track (calls left in the noise track stay)
DENOISED_STEADY = TrackInput(denoise=True, remove="floor-steady")


@dataclass(frozen=True)
class Rule:
    """How the mix's and the tracks' scores become one score per window and species.

    ``min_level_db``: a track whose energy in the window is below this share of the tracks'
    total (dB) is dropped there. ``min_active``: tracks count only in windows where at least
    this many tracks are within ``active_db`` of the total. ``top_k``: a track's score counts
    only for its own ``top_k`` highest-scoring species. ``calibration`` (a, b): a track's
    logit ℓ becomes a·ℓ + b before pooling. ``align``: a quantile q; each track's logits are
    shifted, window by window, so that their q-quantile over all labels equals the mix's (what
    separation artefacts add to every species is taken off). ``pool``: ``max``, ``mean``,
    ``gain`` or ``floor`` (see :func:`combine`); ``track_weight``: the best track's weight in ``mean`` (½: the
    plain mean) or in ``gain``; ``denoised``: the weight of the score of the mixture without one
    of its tracks (``denoise_input``: :data:`DENOISED`, its loudest), in ``mean`` a third term
    taken from the mix's weight, in ``gain`` a second gain. ``gate`` (``gain`` only): a
    probability; the tracks raise the mix only with what they say above it (confident evidence):
    ℓ_mix + w·max(0, ℓ_track − max(ℓ_mix, logit(gate))).
    """

    name: str
    input: TrackInput = RAW
    min_level_db: float | None = None
    min_active: int = 1
    active_db: float = -20.0
    top_k: int | None = None
    calibration: tuple[float, float] | None = None
    align: float | None = None
    pool: str = "max"
    track_weight: float = 0.5
    denoised: float = 0.0
    denoise_input: TrackInput = DENOISED
    gate: float | None = None

    def __post_init__(self):
        if not self.denoise_input.denoise:
            raise ValueError("denoise_input must be a TrackInput with denoise=True")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {self.pool!r}")
        if self.denoised and self.pool == "max":
            raise ValueError("denoised needs pool 'mean' or 'gain'")
        if self.pool in ("mean", "floor") and self.track_weight + self.denoised > 1:
            raise ValueError(f"pool {self.pool!r} needs track_weight + denoised ≤ 1")
        if self.gate is not None and (self.pool != "gain" or not 0 < self.gate < 1):
            raise ValueError("gate must be a probability in (0, 1), with pool 'gain'")
        if not (0 <= self.track_weight <= 1 and 0 <= self.denoised <= 1):
            raise ValueError("track_weight and denoised must be in [0, 1]")

    @property
    def inputs(self) -> tuple[TrackInput, ...]:
        """What the classifier must hear for this rule: the tracks' input (and ``denoise_input``)."""
        return (self.input, self.denoise_input) if self.denoised else (self.input,)


#: How the mix's logit and the others are pooled (:func:`combine`)
POOLS = ("max", "mean", "gain", "floor")

#: The paper's rule: the maximum over the mix and every separated track, as they come.
PAPER = Rule("max (paper)")
#: What ``--mode mix+separated`` does by default: the mix's evidence is the floor, and a track's
#: counts only where it is above the default detection threshold. Each track is heard with the
#: mixture added 15 dB under the track's own level, and a species' logit is the mix's raised by
#: what the best track says above both the mix and logit(0.1):
#: ℓ_mix + max(0, ℓ_track − max(ℓ_mix, logit 0.1)). Where the mix already scores ≥ 0.1 this is the
#: paper's max; below it, a track must pass 0.1 to count, and raises the mix by its excess only, so
#: the tracks' sub-threshold noise never reorders the mix's weak scores. A track that misses a bird
#: leaves the mix's score as it is. Chosen leave-one-dataset-out (``benchmarks/table2_lodo.py``;
#: docs/classify.md): the rule chosen without each of six data sets in five of them, and on all six
#: together never below the mix on any set, metric or threshold. The previous defaults, a weighted
#: mean of logits (which lowered the mix's scores where the tracks missed a bird) and then
#: ℓ_mix + ¼·max(0, ℓ_track − ℓ_mix), gained less.
DEFAULT = Rule("the mix's logit, raised by what the best track (mix 15 dB under it) says above the mix and 0.1",
               input=TrackInput(mix_db=-15.0, under_track=True), pool="gain", track_weight=1.0, gate=0.1)
#: ``--combine`` names.
RULES = {"default": DEFAULT, "max": PAPER}


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.clip(np.log(p) - np.log1p(-p), -LOGIT_CLIP, LOGIT_CLIP)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -LOGIT_CLIP, LOGIT_CLIP)))


def track_levels(tracks: np.ndarray) -> np.ndarray:
    """(..., M, T) → (..., M): each track's energy as a share of the tracks' total, in dB
    (−120 dB where the window is silent)."""
    e = np.einsum("...t,...t->...", tracks.astype(np.float64), tracks.astype(np.float64))
    total = e.sum(-1, keepdims=True)
    return np.where(total > 0, 10 * np.log10(np.maximum(e, 1e-30) / np.maximum(total, 1e-30)), -120.0).clip(-120, 0)


def kept_tracks(rule: Rule, levels: np.ndarray) -> np.ndarray:
    """(N, M) levels (dB) → (N, M) bool: the tracks that count in each window."""
    keep = np.ones(levels.shape, bool)
    if rule.min_level_db is not None:
        keep &= levels >= rule.min_level_db
    if rule.min_active > 1:
        keep &= ((levels >= rule.active_db).sum(1) >= rule.min_active)[:, None]
    return keep


def best_track(rule: Rule, tracks: np.ndarray, levels: np.ndarray,
               mix: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, M, L) track scores → (best logit (N, L), −inf where no track counts; its track
    1…M (N, L), 0 where none). ``mix`` (N, L) is needed by ``rule.align``."""
    lt = logit(tracks)
    if rule.align is not None:
        lt = lt + (np.quantile(logit(mix), rule.align, axis=-1)[:, None]
                   - np.quantile(lt, rule.align, axis=-1))[..., None]
    if rule.calibration is not None:
        a, b = rule.calibration
        lt = a * lt + b
    mask = np.broadcast_to(kept_tracks(rule, levels)[:, :, None], lt.shape)
    if rule.top_k is not None:
        k = min(rule.top_k, tracks.shape[-1])
        kth = np.partition(tracks, -k, axis=-1)[..., -k, None]  # (N, M, 1): each track's k-th best
        mask = mask & (tracks >= kth)
    lt = np.where(mask, lt, -np.inf)
    best = lt.max(axis=1) if lt.shape[1] else np.full((lt.shape[0], lt.shape[2]), -np.inf)
    arg = lt.argmax(axis=1) + 1 if lt.shape[1] else np.zeros(best.shape, int)
    return best, np.where(np.isfinite(best), arg, 0).astype(np.int16)


def combine(rule: Rule, mode: str, mix: np.ndarray | None, tracks: np.ndarray | None,
            levels: np.ndarray | None, denoised: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N, L) and the input that gave each (N, L): 0 the mix, k ≥ 1 the k-th track.

    mode ``mix``: the mix's scores; ``separated``: the best counted track (0 where none
    counts); ``mix+separated``: the rule's pooling of the mix and the best counted track:
    ``max`` the larger logit; ``mean`` a weighted mean of logits (which can lower the mix's);
    ``gain`` ℓ_mix + w·max(0, ℓ_track − ℓ_mix) (+ w_d·max(0, ℓ_denoised − ℓ_mix)): the mix's
    evidence is a floor that the tracks may only raise (w = 1 on the tracks alone is ``max``;
    with ``gate`` g, ℓ_mix in the max terms becomes max(ℓ_mix, logit g));
    ``floor`` the larger of the mix's logit and the weighted mean (the mean may raise it, never
    lower it).
    mix (N, L), tracks (N, M, L), levels (N, M); denoised (N, L): the scores of
    ``rule.denoise_input``, needed when ``rule.denoised``.
    """
    if mode == "mix":
        return np.asarray(mix, np.float32), np.zeros(mix.shape, np.int16)
    if mode not in ("separated", "mix+separated"):
        raise UsageError(f"unknown mode {mode!r}")
    best, arg = best_track(rule, tracks, levels, mix)
    if mode == "separated":
        return np.where(np.isfinite(best), sigmoid(best), 0.0).astype(np.float32), arg
    lm = logit(mix)
    if rule.pool == "max":
        take = best > lm
        out = np.where(take, best, lm)
    elif rule.pool == "gain":  # the mix's logit, raised by a share of what the others say above it; never lowered
        floor = lm if rule.gate is None else np.maximum(lm, logit(rule.gate))  # what evidence must exceed
        take = best > floor
        out = lm + rule.track_weight * np.where(take, best - floor, 0.0)
        if rule.denoised:
            if denoised is None:
                raise ValueError(f"{rule.name} needs the scores of {rule.denoise_input.name}")
            out = out + rule.denoised * np.maximum(logit(denoised) - floor, 0.0)
    else:  # weighted mean of the mix's logit and the best track's; the mix alone where no track counts
        take = np.isfinite(best)
        w, wd = rule.track_weight, rule.denoised
        out = (1 - w - wd) * lm + w * np.where(take, best, lm)
        if wd:
            if denoised is None:
                raise ValueError(f"{rule.name} needs the scores of {rule.denoise_input.name}")
            out = out + wd * logit(denoised)
        if rule.pool == "floor":  # the mean where it is above the mix's logit, the mix's elsewhere
            take = take & (out > lm)
            out = np.maximum(out, lm)
    return sigmoid(out).astype(np.float32), np.where(take, arg, 0).astype(np.int16)


def with_input(rule: Rule, track_input: TrackInput, name: str | None = None) -> Rule:
    return replace(rule, input=track_input, name=name or rule.name)
