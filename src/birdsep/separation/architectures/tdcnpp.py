"""TDCN++ masking separators (Wisdom et al. 2020, as used by Denton et al. 2022, §2.2).

Analysis basis → TDCN++ mask network → M sigmoid masks × analysis coefficients → synthesis
basis → mixture-consistency projection. Two registered entries share this config and module:

* ``tdcnpp-learned`` (the paper's): a framed dense layer with ReLU and a learned overlap-add
  synthesis, 1 ms windows in the paper;
* ``tdcnpp-stft`` (MixIT's FUSS baselines): a short-time Fourier transform (sqrt-Hann
  window), the mask network reading the power-law compressed magnitude of the RMS-normalised
  mixture and its real masks applied to the complex coefficients. A 32 ms / 8 ms STFT has 10×
  fewer frames per second than a 2.5 ms / 1.25 ms learned basis, so the same CPU time buys a
  much larger mask network; the separator is then exactly scale-equivariant.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from birdsep.separation.architectures import Architecture, register
from birdsep.separation.layers import CONSISTENCY, LearnedBasis, MaskingSeparator, STFTBasis, TDCNpp

BASES = ("learned", "stft")


@dataclass(frozen=True)
class SeparatorConfig:
    """Everything needed to rebuild a TDCN++ separator; stored as JSON beside its weights."""

    sample_rate: int = 22050
    num_sources: int = 4  # M
    basis: str = "learned"  # learned | stft
    window_ms: float = 1.0  # analysis/synthesis basis window
    hop_ms: float = 0.5
    num_coeffs: int = 256  # basis size N of the learned basis (the STFT has window // 2 + 1 bins)
    compression: float = 0.3  # STFT basis: the mask network reads |X / rms(x)| ** compression
    bottleneck: int = 256  # TDCN++ residual width
    hidden: int = 512  # TDCN++ block width
    kernel: int = 3
    repeats: int = 4
    blocks: int = 8  # per repeat; dilations 1, 2, … 2**(blocks-1)
    residual_scale_init: float = 0.9  # block i's output scale starts at this ** i
    norm_eps: float = 1e-8
    consistency: str = "uniform"  # uniform | learned | magsq | none
    clip_seconds: float = 6.0  # training mixture length (not a limit at inference)

    @property
    def window(self) -> int:
        w = max(2, int(round(self.window_ms * self.sample_rate / 1000)))
        return w + (w % 2) if self.basis == "stft" else w  # an even FFT size for the STFT

    @property
    def coefficients(self) -> int:
        """N: analysis coefficients per frame (what the masks multiply)."""
        return self.window // 2 + 1 if self.basis == "stft" else self.num_coeffs

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop

    @property
    def hop(self) -> int:
        return max(1, int(round(self.hop_ms * self.sample_rate / 1000)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SeparatorConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown separator config keys: {sorted(unknown)}")
        cfg = cls(**d)
        if cfg.basis not in BASES:
            raise ValueError(f"unknown basis {cfg.basis!r} (choose from {', '.join(BASES)})")
        return cfg


class Separator(MaskingSeparator):
    """Mixture (B, T) → M sources (B, M, T) that sum to the mixture (unless consistency is none)."""

    def __init__(self, cfg: SeparatorConfig):
        super().__init__()
        if cfg.num_sources < 2:
            raise ValueError("a separator needs at least 2 sources")
        if cfg.kernel < 1 or cfg.kernel % 2 == 0:
            raise ValueError("the depthwise kernel must be odd (same-length 'same' padding)")
        if cfg.basis not in BASES:
            raise ValueError(f"unknown basis {cfg.basis!r} (choose from {', '.join(BASES)})")
        if cfg.consistency not in CONSISTENCY:
            raise ValueError(f"unknown consistency {cfg.consistency!r} (choose from {', '.join(CONSISTENCY)})")
        self.config = cfg
        self.basis = (STFTBasis(cfg.window, cfg.hop, cfg.compression) if cfg.basis == "stft"
                      else LearnedBasis(cfg.window, cfg.hop, cfg.num_coeffs))
        self.masknet = TDCNpp(cfg.coefficients, cfg.num_sources, cfg.bottleneck, cfg.hidden, cfg.kernel, cfg.repeats,
                              cfg.blocks, cfg.residual_scale_init, cfg.norm_eps,
                              learned_weights=cfg.consistency == "learned")


def widen_sources(state: dict[str, torch.Tensor], old: int, new: int, coefficients: int,
                  noise: float = 1e-3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A warm start for M = ``new`` outputs from the weights of a model with M = ``old``.

    Everything but the mask head (and learned consistency weights) is shared; output m of
    the new head starts as a copy of output m mod ``old`` plus a little noise, so the copies
    can drift apart while training. Returns a new state dict; the input is not modified.
    """
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    pick = torch.arange(new) % old  # (new,) which old source each new one copies
    for name in ("masknet.masks.weight", "masknet.masks.bias"):
        w = state[name].view(old, coefficients, *state[name].shape[1:])  # (M_old, N, ...)
        w = w[pick].reshape(new * coefficients, *state[name].shape[1:]).clone()
        out[name] = w + noise * w.abs().mean() * torch.randn(w.shape, generator=g)
    for name in ("masknet.mix_weights.weight", "masknet.mix_weights.bias"):
        if name in state:
            out[name] = state[name][pick].clone()
    return out


def _widen(state, old: SeparatorConfig, new: SeparatorConfig, seed: int = 0):
    return widen_sources(state, old.num_sources, new.num_sources, new.coefficients, seed=seed)


def _describe(cfg: SeparatorConfig) -> str:
    return f"{cfg.basis} {cfg.window_ms:g}/{cfg.hop_ms:g} ms"


#: ``paper``: the published size (≈8.8 M parameters at M = 4).
#: ``small``: sized to train usefully in an hour on 2 CPU cores (2.5 ms basis, 2 × 8 blocks
#: of width 128/256, 4 s mixtures): about 30× fewer multiply-adds per second of audio.
LEARNED_PRESETS = {
    "paper": SeparatorConfig(),
    "small": SeparatorConfig(
        window_ms=2.5, hop_ms=1.25, num_coeffs=128, bottleneck=128, hidden=256, repeats=2, blocks=8,
        clip_seconds=4.0,
    ),
}
#: ``stft``: full band at 32 kHz, a 32 ms / 8 ms STFT (125 frames/s, 513 bins) and 2 × 8
#: blocks of width 128/256 (receptive field 8 s), 4 s mixtures; ``stft-wide``: the same at
#: the paper's width 256/512 (benchmarks/separator_ablation.py compares them per CPU-hour).
STFT_PRESETS = {
    "stft": SeparatorConfig(
        sample_rate=32000, basis="stft", window_ms=32.0, hop_ms=8.0, bottleneck=128, hidden=256, repeats=2,
        blocks=8, clip_seconds=4.0,
    ),
    "stft-wide": SeparatorConfig(
        sample_rate=32000, basis="stft", window_ms=32.0, hop_ms=8.0, bottleneck=256, hidden=512, repeats=2,
        blocks=8, clip_seconds=4.0,
    ),
}

for _basis, _presets in (("learned", LEARNED_PRESETS), ("stft", STFT_PRESETS)):
    register(Architecture(
        name=f"tdcnpp-{_basis}", config=SeparatorConfig, module=Separator, presets=_presets, describe=_describe,
        widen=_widen, owns=lambda cfg, b=_basis: cfg.basis == b,
    ))
