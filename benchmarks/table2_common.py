"""What the Table 2 benchmarks share (``table2_synthetic.py``, ``table2_real.py``).

- :class:`ScoreCache`: the classifier's window scores of each recording's mix, and of its
  separated tracks as heard through each :class:`~birdsep.combination.TrackInput`, kept on disk
  (``npz``, float16) under a key made of the file's contents, the classifier, the window and,
  for tracks, the separator's weights (sha1 of model.safetensors) and the track input. Trying a
  new combination rule then costs seconds; a new separator or track input costs one pass of the
  classifier.
- :data:`CANDIDATES`: the combination rules measured side by side.
- :func:`evaluate_rules`: truth and score matrices over every recording's windows, the four
  metrics, and paired bootstrap 95 % intervals (over recordings) of each rule's gain over the
  mix; :func:`print_rules` prints them.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from birdsep import audio, metrics
from birdsep.combination import DENOISED_STEADY, PAPER, RAW, Rule, TrackInput, logit
from birdsep.detect import FileScores, combine, score_file, separating, window_spans
from birdsep.evaluation import covers

WINDOW = 5.0
MIX_BACK = TrackInput(mix_db=-20.0)
HIGH_BAND = TrackInput(high_band=True)
#: the mixture 15 dB under each track's own level in the window: a quiet bird's track is not
#: drowned by the mixture added back (BirdNET normalises each window; see TrackInput)
MIX_UNDER = TrackInput(mix_db=-15.0, under_track=True)
#: the mixture with one track taken out, for each track (measured once: docs/classify.md; not a
#: candidate here, as its four more classifier passes per window would take the real benchmark past 30 min)
COMPLEMENT = TrackInput(complement=True)
#: the rules with the mixture without its *loudest* track (the default of the fourth session) or
#: without its whole noise-floor track left the table when the steady part of the noise-floor
#: track replaced them: their extra classifier passes would take the cold real benchmark past
#: 30 min; their figures are in benchmarks/results/table2_*_stft_m4_{denoised,floor,steady}.txt.

#: name → rule; "mix only" and "separated only" are the modes; calibrated rules get their
#: parameters from :func:`fit_calibration` on synthetic training scenes.
CANDIDATES: list[Rule] = [
    PAPER,
    Rule("drop tracks < −20 dB of the tracks' energy", min_level_db=-20.0),
    Rule("drop tracks < −10 dB", min_level_db=-10.0),
    Rule("only windows with ≥ 2 active tracks", min_active=2),
    Rule("each track speaks for its top-1 species", top_k=1),
    Rule("each track speaks for its top-3 species", top_k=3),
    Rule("mix back at −20 dB", input=MIX_BACK),
    Rule("full band (high band added)", input=HIGH_BAND),
    Rule("tracks aligned to the mix (90th percentile)", align=0.9),
    Rule("calibrated tracks", calibration=(1.0, 0.0)),
    Rule("mean of mix and best track (logits)", pool="mean"),
    Rule("mix back −20 dB, mean", input=MIX_BACK, pool="mean"),
    Rule("mix back −20 dB, mean, top-3", input=MIX_BACK, pool="mean", top_k=3),
    Rule("mix back −20 dB, track weight ⅓", input=MIX_BACK, pool="mean", track_weight=1 / 3),
    Rule("mix back −20 dB, track weight ¼", input=MIX_BACK, pool="mean", track_weight=1 / 4),
    Rule("mix back −20 dB, track weight ⅓, top-3", input=MIX_BACK, pool="mean", track_weight=1 / 3, top_k=3),
    Rule("mix 15 dB under each track, max", input=MIX_UNDER),
    Rule("mix 15 dB under each track, mean", input=MIX_UNDER, pool="mean"),
    Rule("mix 15 dB under each track, track weight ⅓", input=MIX_UNDER, pool="mean", track_weight=1 / 3),
    Rule("mix 15 dB under each track, track weight ¼", input=MIX_UNDER, pool="mean", track_weight=1 / 4),
    Rule("mix 15 dB under each track ¼ + mix without its noise-floor track's steady part ¼", input=MIX_UNDER,
         pool="mean", track_weight=1 / 4, denoised=1 / 4, denoise_input=DENOISED_STEADY),
    Rule("mix 15 dB under each track ¼ + mix without its noise-floor track's steady part ⅓", input=MIX_UNDER,
         pool="mean", track_weight=1 / 4, denoised=1 / 3, denoise_input=DENOISED_STEADY),
    Rule("mix 15 dB under each track ¼ + mix without its noise-floor track's steady part ½", input=MIX_UNDER,
         pool="mean", track_weight=1 / 4, denoised=1 / 2, denoise_input=DENOISED_STEADY),
]


def candidates(separator, full_band: bool = False) -> list[Rule]:
    """:data:`CANDIDATES`; "full band" only when asked for (it costs a third more classifier
    time, and lost on both benchmarks with the 22.05 kHz separator: docs/classify.md) and only
    for a separator whose band stops below BirdNET's 15 kHz (otherwise its high band is empty)."""
    full = full_band and separator.config.sample_rate / 2 < 15000
    return [r for r in CANDIDATES if full or not r.input.high_band]


def add_arguments(ap) -> None:
    """The flags both benchmarks take."""
    ap.add_argument("--model", default=None, help="separator (default: the shipped model)")
    ap.add_argument("--reps", type=int, default=1000, help="bootstrap replicates")
    ap.add_argument("--full-band", action="store_true",
                    help="also the full-band candidate (tracks + the band above a 22.05 kHz separator's)")
    ap.add_argument("--threads", type=int, default=1)


def start(a, data: Path, title: str | None):
    """Check the data, print the header (unless ``title`` is None), load BirdNET and the
    separator: (detector, score cache, candidate rules)."""
    import sys
    import time

    if not data.is_dir():
        sys.exit(f"needs the real recordings in {data}")
    import torch

    from birdsep.detect import ClassifyOptions, Detector
    from birdsep.pretrained import resolve
    from common import header

    torch.set_num_threads(a.threads)
    if title is not None:
        header(title)
    det = Detector(ClassifyOptions(classifier="birdnet", mode="mix+separated", model=a.model, threads=a.threads))
    folder = resolve(a.model)
    digest = weights_digest(folder)
    cache = ScoreCache(det, digest)
    written = time.strftime("%Y-%m-%d %H:%M", time.gmtime((folder / "model.safetensors").stat().st_mtime))
    print(f"separator: {a.model or 'the shipped default'} ({folder.name}; M = {det.separator.config.num_sources}, "
          f"{det.separator.config.sample_rate} Hz; weights sha1 {digest}, written {written} UTC); classifier: "
          f"{det.classifier.name}; score cache: {cache.root}\n")
    return det, cache, candidates(det.separator, a.full_band)


def cache_root() -> Path:
    """table2_scores/ in birdsep's cache folder ($BIRDSEP_CACHE, else ~/.cache/birdsep)."""
    from birdsep.separation.runtime import choices_file

    return choices_file().parent / "table2_scores"


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def weights_digest(folder: Path) -> str:
    return file_digest(folder / "model.safetensors")


def digest_of(path: Path) -> tuple[str, bool]:
    """(the file's digest, whether its scores depend on streaming: more than one minute of windows)."""
    return file_digest(path), len(window_spans(audio.info(path).duration, WINDOW)) > OLD_PIECE_WINDOWS


#: windows per piece before classify streamed (60 s pieces of 5 s windows)
OLD_PIECE_WINDOWS = 12


class ScoreCache:
    """Window scores per recording, computed once per (file, classifier, window[, separator, input])."""

    def __init__(self, detector, separator_digest: str | None, root: Path | None = None):
        self.det, self.sep = detector, separator_digest
        self.root = root or cache_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.computed_s = 0.0

    def _file(self, digest: str, streamed: bool, part: str) -> Path:
        key = [digest, self.det.classifier.name, WINDOW, part, self.sep if part != "mix" else None]
        key = json.dumps(key + ["streamed"] if streamed else key)
        return self.root / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.npz"

    def scores(self, path: Path, inputs: tuple[TrackInput, ...]) -> FileScores:
        # Since e5ea780 classify resamples and separates a recording as one stream; before, each
        # minute (12 windows) on its own. A recording of one such minute scores the same samples
        # either way; longer ones are keyed anew (their windows where minutes met have changed).
        digest = digest_of(path)
        mix_file = self._file(*digest, "mix")
        files = {inp: self._file(*digest, inp.name) for inp in inputs}
        todo = tuple(inp for inp, f in files.items() if not f.is_file())
        if todo or not mix_file.is_file():
            started = time.time()
            tracks_for = None
            if todo:
                d = self.det
                tracks_for = separating(d.separator, d.classifier.sample_rate, d.rt)
            fs = score_file(path, self.det.classifier, tracks_for, window=WINDOW, mix=not mix_file.is_file(),
                            inputs=todo)
            if fs.mix is not None:
                _save(mix_file, spans=np.array(fs.spans), scores=fs.mix.astype(np.float16))
            for inp in todo:
                _save(files[inp], spans=np.array(fs.spans), scores=fs.tracks[inp].astype(np.float16),
                      levels=fs.levels)
            self.computed_s += time.time() - started
        with np.load(mix_file) as z:
            spans, mix = [tuple(s) for s in z["spans"].tolist()], z["scores"].astype(np.float32)
        tracks, levels = {}, None
        for inp, f in files.items():
            with np.load(f) as z:
                tracks[inp], levels = z["scores"].astype(np.float32), z["levels"]
        return FileScores(spans, mix, tracks, levels)


def _save(path: Path, **arrays) -> None:
    from birdsep import files

    with files.atomic(path) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no .npz to it
        np.savez(fh, **arrays)


# ------------------------------------------------------------------------------ evaluation


@dataclass
class Recording:
    name: str
    path: Path
    events: list[tuple[float, float, str]]  # (start s, end s, classifier label)
    group: str = ""  # the data set it belongs to


@dataclass
class Matrices:
    """Every recording's windows stacked: truth (W, S), the window's recording and data set,
    and the per-file scores kept for the rules."""

    species: list[str]
    y: np.ndarray
    recording: np.ndarray
    group: np.ndarray
    files: list[FileScores] = field(default_factory=list)
    columns: np.ndarray | None = None  # the species' columns among the classifier's labels

    def scores(self, rule: Rule | str) -> np.ndarray:
        """(W, S) scores of ``rule`` (or the mode "mix" / "separated") on the species."""
        parts = []
        for fs in self.files:
            if rule == "mix":
                s = fs.mix
            elif rule == "separated":
                s, _ = combine("separated", fs, PAPER)
            else:
                s, _ = combine("mix+separated", fs, rule)
            parts.append(s[:, self.columns])
        return np.concatenate(parts)


def matrices(recordings: list[Recording], cache: ScoreCache, labels: list[str], inputs: tuple[TrackInput, ...],
             progress: bool = True) -> Matrices:
    from tqdm import tqdm

    species = sorted({e[2] for r in recordings for e in r.events})
    col = {s: i for i, s in enumerate(species)}
    ys, rec, grp, files = [], [], [], []
    for i, r in enumerate(tqdm(recordings, desc="scoring", unit="file", disable=not progress)):
        fs = cache.scores(r.path, inputs)
        y = np.zeros((len(fs.spans), len(species)), np.int8)
        for w, (w0, w1) in enumerate(fs.spans):
            for s, e, lab in r.events:
                if covers(s, e, w0, w1):
                    y[w, col[lab]] = 1
        ys.append(y)
        rec += [i] * len(y)
        grp += [r.group] * len(y)
        files.append(fs)
    index = {lab: j for j, lab in enumerate(labels)}
    return Matrices(species, np.concatenate(ys), np.array(rec), np.array(grp), files,
                    np.array([index[s] for s in species]))


def subset(m: Matrices, group: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of one data set: (row mask, recording ids, species columns with any positive there)."""
    rows = m.group == group
    return rows, m.recording[rows], np.flatnonzero(m.y[rows].any(0))


def fit_calibration(m: Matrices, rule: Rule = PAPER) -> tuple[float, float]:
    """(a, b) such that a track's logit ℓ → a·ℓ + b is on the mix's scale: logistic fits of
    presence on the mix's logit (a₀, b₀) and on the best track's logit (a₁, b₁) over every
    (window, species) pair, then a = a₁/a₀, b = (b₁ − b₀)/a₀."""
    y = m.y.ravel().astype(float)
    mix = logit(m.scores("mix")).ravel()
    best = logit(m.scores("separated")).ravel()
    a0, b0 = _logistic(mix, y)
    a1, b1 = _logistic(best, y)
    return a1 / a0, (b1 - b0) / a0


def _logistic(x: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """Maximum-likelihood (slope, intercept) of P(y = 1) = σ(slope·x + intercept), by Newton's method."""
    w = np.zeros(2)
    X = np.stack([x, np.ones_like(x)], 1)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -30, 30)))
        grad = X.T @ (y - p)
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w += step
        if np.abs(step).max() < 1e-8:
            break
    return float(w[0]), float(w[1])


@dataclass
class RuleResult:
    name: str
    value: np.ndarray  # (4,) cmAP, lwlrap, d′, top-1 on all windows
    gain: np.ndarray  # (4,) minus the mix's
    low: np.ndarray  # (4,) 2.5 % of the bootstrap gains
    high: np.ndarray  # (4,) 97.5 %


def evaluate_rules(m: Matrices, rules: list[Rule | str], rows=None, columns=None, reps: int = 1000,
                   seed: int = 0) -> list[RuleResult]:
    """Metrics of each rule ("mix", "separated" or a Rule) and its bootstrap gain over the mix."""
    rows = np.ones(len(m.y), bool) if rows is None else rows
    columns = np.arange(len(m.species)) if columns is None else columns
    y = m.y[rows][:, columns]
    names = [r if isinstance(r, str) else r.name for r in rules]
    scores = {n: m.scores(r)[rows][:, columns] for n, r in zip(names, rules)}
    if "mix" not in scores:
        scores["mix"] = m.scores("mix")[rows][:, columns]
    full = {n: np.array(_values(metrics.score_all(y, s))) for n, s in scores.items()}
    boot = metrics.bootstrap(y, scores, m.recording[rows], reps=reps, seed=seed)
    out = []
    for n in names:
        d = boot[n] - boot["mix"]
        with np.errstate(invalid="ignore"):
            lo, hi = np.nanpercentile(d, 2.5, axis=0), np.nanpercentile(d, 97.5, axis=0)
        out.append(RuleResult(n, full[n], full[n] - full["mix"], lo, hi))
    return out


def _values(s: metrics.Scores) -> list[float]:
    return [s.cmap, s.lwlrap, s.dprime, s.top1]


def print_rules(title: str, results: list[RuleResult], note: str = "") -> None:
    from common import table

    print(title)
    rows = []
    for r in results:
        row = {"input to BirdNET / rule": r.name}
        for k, metric in enumerate(("cmAP", "lwlrap", "d′", "top-1")):
            fmt = "{:.2f}" if metric == "d′" else "{:.3f}"
            row[metric] = fmt.format(r.value[k])
            row[f"Δ{metric} [95 % CI]"] = ("" if r.name == "mix" else
                                           f"{r.gain[k]:+.3f} [{r.low[k]:+.3f}, {r.high[k]:+.3f}]")
        rows.append(row)
    table(rows)
    if note:
        print(note + "\n")


def with_calibration(rules: list[Rule], ab: tuple[float, float]) -> list[Rule]:
    return [replace(r, calibration=ab) if r.calibration is not None else r for r in rules]


def inputs_of(rules: list[Rule | str]) -> tuple[TrackInput, ...]:
    seen = [RAW]
    for r in rules:
        for inp in r.inputs if isinstance(r, Rule) else ():
            if inp not in seen:
                seen.append(inp)
    return tuple(seen)


def same_rule(a: Rule, b: Rule) -> bool:
    """Whether two rules compute the same thing (names aside)."""
    return replace(a, name="") == replace(b, name="")


#: How far below the mix lwlrap, d′ and top-1 may fall for a rule to be chosen (about one window
#: of the ~160 labelled windows of the selection scenes, in top-1).
TOLERANCE = 0.005


def choose(results: list[RuleResult]) -> str | None:
    """The rule with the largest cmAP gain among those whose lwlrap, d′ and top-1 gains are all
    ≥ −:data:`TOLERANCE` (point estimates); None if no rule qualifies. (birdsep's default was
    chosen this way on the gains averaged over two separators: docs/classify.md.)"""
    ok = [r for r in results if r.name not in ("mix", "separated") and np.all(r.gain[1:] >= -TOLERANCE)]
    return max(ok, key=lambda r: r.gain[0]).name if ok else None


GOAL_CMAP = 0.02


@dataclass
class SplitHalf:
    chosen: dict  # rule name (None: no rule qualified) → times chosen
    held: np.ndarray  # (splits, 4) held-out gains over the mix of the rule chosen on the other half
    fixed: dict  # rule name → (splits, 4) held-out gains of that rule, whatever was chosen


def split_half(y: np.ndarray, recording: np.ndarray, scores: dict, splits: int, follow=(), seed: int = 0) -> SplitHalf:
    """Choose the rule on a random half of the recordings with :func:`choose`'s criterion (point
    estimates) and measure it on the other half, ``splits`` times. y (W, S) truth; recording (W,)
    each window's recording; scores: name → (W, S), "mix" included."""
    from collections import Counter

    def gains(rows):
        cols = np.flatnonzero(y[rows].any(0))
        vals = {n: np.array(_values(metrics.score_all(y[rows][:, cols], s[rows][:, cols]))) for n, s in scores.items()}
        return {n: vals[n] - vals["mix"] for n in scores if n != "mix"}

    rng = np.random.default_rng(seed)
    n_rec = int(recording.max()) + 1
    chosen, held, fixed = Counter(), [], {n: [] for n in follow}
    for _ in range(splits):
        pick = (rng.permutation(n_rec) < n_rec // 2)[recording]  # (W,): the window's recording is in the choosing half
        g_pick, g_test = gains(pick), gains(~pick)
        ok = [n for n, g in g_pick.items() if np.all(g[1:] >= -TOLERANCE)]
        best = max(ok, key=lambda n: g_pick[n][0]) if ok else None
        chosen[best] += 1
        held.append(g_test[best] if best else np.zeros(4))
        for n in follow:
            fixed[n].append(g_test[n])
    return SplitHalf(dict(chosen), np.array(held), {n: np.array(v) for n, v in fixed.items()})


def print_summary(names: list[str], tables: dict[str, list[RuleResult]]) -> None:
    """Gains of the named rules on each benchmark, and whether the goal is met: cmAP at least
    the mix's + 0.02 and lwlrap, d′ and top-1 not below the mix's, on every benchmark."""
    from common import table

    rows = []
    for name in dict.fromkeys(names):
        met = True
        for bench, results in tables.items():
            r = next(x for x in results if x.name == name)
            met &= bool(r.gain[0] >= GOAL_CMAP and np.all(r.gain[1:] >= 0))
            rows.append({"rule": name, "benchmark": bench} | {
                m: f"{r.gain[k]:+.3f} [{r.low[k]:+.3f}, {r.high[k]:+.3f}]"
                for k, m in enumerate(("ΔcmAP", "Δlwlrap", "Δd′", "Δtop-1"))})
        rows[-1]["goal met"] = "yes" if met else "no"
    for r in rows:
        r.setdefault("goal met", "")
    print(f"Gains over the mix with 95 % intervals; goal: ΔcmAP ≥ {GOAL_CMAP} and the others ≥ 0 on both "
          "benchmarks")
    table(rows)
