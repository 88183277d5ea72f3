"""MoMi evaluation (the paper's Table 1 metric) on a fixed, seeded set of held-out MoMs."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from birdsep import files, limits
from birdsep.separation.data import RecordingIndex, WindowSampler, fixed_moms
from birdsep.separation.mixit import active_sources, momi

ACTIVE_DB = -20.0


@dataclass
class SeparatorReport:
    model: str
    mixtures: int
    clip_seconds: float
    seed: int
    recordings: int
    momi_mean: float
    momi_std: float
    momi_median: float
    momi_p10: float
    momi_p90: float
    active_sources_mean: float
    num_sources: int
    skipped: list[str]

    def table(self) -> str:
        rows = [
            ("model", self.model),
            ("held-out recordings", str(self.recordings)),
            ("mixtures of mixtures", f"{self.mixtures} × {self.clip_seconds:g} s (seed {self.seed})"),
            ("MoMi mean ± std (dB)", f"{self.momi_mean:.2f} ± {self.momi_std:.2f}"),
            ("MoMi median [p10, p90] (dB)", f"{self.momi_median:.2f} [{self.momi_p10:.2f}, {self.momi_p90:.2f}]"),
            (f"active outputs (> {ACTIVE_DB:g} dB)", f"{self.active_sources_mean:.2f} of {self.num_sources}"),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def evaluate_separator(data: list[str], model=None, mixtures: int = 100, clip_seconds: float = 6.0, seed: int = 1234,
                       json_path: str | None = None, threads: int | None = None, progress: bool = True) -> SeparatorReport:
    from birdsep.errors import UsageError
    from birdsep.pretrained import load_model, resolve

    limits.clip(clip_seconds)
    if limits.threads(threads):
        torch.set_num_threads(threads)
    name = str(resolve(model)) if model is None or isinstance(model, (str, Path)) else "<in memory>"
    sep = load_model(model) if model is None or isinstance(model, (str, Path)) else model
    index = RecordingIndex.build(data, progress=progress)
    for line in index.skipped:
        print(f"skipped {line}")
    if not index.recordings:
        raise UsageError("no usable audio in " + " ".join(map(str, data)))
    sampler = WindowSampler(index, clip_seconds, sep.config.sample_rate)
    scores, active = [], []
    with torch.inference_mode():
        for mom in tqdm(fixed_moms(sampler, mixtures, seed), total=mixtures, desc="evaluating", unit="MoM",
                        disable=not progress):
            refs = mom.unsqueeze(0)  # (1, 2, T)
            sources = sep(refs.sum(1))  # (1, M, T)
            scores.append(momi(refs, sources).item())
            active.append(active_sources(sources, refs.sum(1), ACTIVE_DB).item())
    s = np.asarray(scores)
    report = SeparatorReport(
        model=name, mixtures=mixtures, clip_seconds=clip_seconds, seed=seed, recordings=len(index.recordings),
        momi_mean=float(s.mean()), momi_std=float(s.std()), momi_median=float(np.median(s)),
        momi_p10=float(np.percentile(s, 10)), momi_p90=float(np.percentile(s, 90)),
        active_sources_mean=float(np.mean(active)), num_sources=sep.config.num_sources, skipped=index.skipped,
    )
    if json_path:
        files.write_json(json_path, asdict(report))
    return report
