"""The separator of Wisdom et al. (2020) as used by Denton et al. (2022), §2.2.

Analysis basis → TDCN++ mask network → M sigmoid masks × analysis coefficients →
synthesis basis → mixture-consistency projection. Two bases:

* ``learned`` (the paper's): a framed dense layer with ReLU and a learned overlap-add
  synthesis, 1 ms windows in the paper;
* ``stft`` (MixIT's FUSS baselines): a short-time Fourier transform (sqrt-Hann window), the
  mask network reading the power-law compressed magnitude of the RMS-normalised mixture and
  its real masks applied to the complex coefficients, inverted by overlap-add. A 32 ms / 8 ms
  STFT has 10× fewer frames per second than a 2.5 ms / 1.25 ms learned basis, so the same
  CPU time buys a much larger mask network; the separator is then exactly scale-equivariant.

Shapes use fixed letters: B batch, M sources, T samples, F frames, C channels.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as Fn
from torch import nn

from birdsep import files
from birdsep.errors import UsageError

KIND = "separator"


@dataclass(frozen=True)
class SeparatorConfig:
    """Everything needed to rebuild a separator; stored as JSON beside its weights."""

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


#: ``paper``: the published size (≈8.8 M parameters at M = 4).
#: ``small``: sized to train usefully in an hour on 2 CPU cores (2.5 ms basis, 2 × 8 blocks
#: of width 128/256, 4 s mixtures): about 30× fewer multiply-adds per second of audio.
#: ``stft``: full band at 32 kHz, a 32 ms / 8 ms STFT (125 frames/s, 513 bins) and 2 × 8
#: blocks of width 128/256 (receptive field 8 s), 4 s mixtures; ``stft-wide``: the same at
#: the paper's width 256/512 (benchmarks/separator_ablation.py compares them per CPU-hour).
PRESETS: dict[str, SeparatorConfig] = {
    "paper": SeparatorConfig(),
    "small": SeparatorConfig(
        window_ms=2.5, hop_ms=1.25, num_coeffs=128, bottleneck=128, hidden=256, repeats=2, blocks=8,
        clip_seconds=4.0,
    ),
    "stft": SeparatorConfig(
        sample_rate=32000, basis="stft", window_ms=32.0, hop_ms=8.0, bottleneck=128, hidden=256, repeats=2,
        blocks=8, clip_seconds=4.0,
    ),
    "stft-wide": SeparatorConfig(
        sample_rate=32000, basis="stft", window_ms=32.0, hop_ms=8.0, bottleneck=256, hidden=512, repeats=2,
        blocks=8, clip_seconds=4.0,
    ),
}


def preset(name: str, **overrides) -> SeparatorConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **overrides)


class LearnedBasis(nn.Module):
    """Learnable analysis (framed dense layer + ReLU) and synthesis (overlap-add) bases."""

    def __init__(self, window: int, hop: int, num_coeffs: int):
        super().__init__()
        self.window, self.hop = window, hop
        self.analysis = nn.Conv1d(1, num_coeffs, window, stride=hop, bias=False)
        self.synthesis = nn.ConvTranspose1d(num_coeffs, 1, window, stride=hop, bias=False)

    def frames_for(self, length: int) -> int:
        return max(1, math.ceil(max(0, length - self.window) / self.hop) + 1)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T) → (..., T') with T' = window + (F-1)·hop ≥ T, zero-padded on the right."""
        frames = self.frames_for(x.shape[-1])
        return Fn.pad(x, (0, self.window + (frames - 1) * self.hop - x.shape[-1]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T') → (B, N, F) non-negative coefficients."""
        return torch.relu(self.analysis(x.unsqueeze(1)))

    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B·M, N, F) → (B·M, T') by overlap-add of the synthesis basis."""
        return self.synthesis(coeffs).squeeze(1)


class STFTBasis(nn.Module):
    """Short-time Fourier transform analysis and its overlap-add inverse (no parameters).

    ``encode`` gives the complex coefficients the masks multiply; ``features`` what the mask
    network reads: the magnitude of the RMS-normalised mixture, compressed by a power law.
    """

    def __init__(self, window: int, hop: int, compression: float):
        super().__init__()
        self.window, self.hop, self.compression = window, hop, compression
        self.register_buffer("taper", torch.hann_window(window, periodic=True).sqrt(), persistent=False)

    def frames_for(self, length: int) -> int:
        return length // self.hop + 1  # centred frames

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T) → (..., T'): at least one window long (the centring pads the rest)."""
        return Fn.pad(x, (0, max(0, self.window - x.shape[-1])))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T') → (B, N, F) complex coefficients, N = window // 2 + 1."""
        return torch.stft(x.float(), self.window, self.hop, window=self.taper, center=True, return_complex=True)

    def features(self, x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, T'), (B, N, F) complex → (B, N, F) real: |X / rms(x)| ** compression."""
        rms = x.float().pow(2).mean(dim=-1).sqrt().clamp_min(1e-8)  # (B,)
        return (coeffs.abs() / rms[:, None, None]).pow(self.compression)

    def decode(self, coeffs: torch.Tensor, length: int) -> torch.Tensor:
        """(B·M, N, F) complex → (B·M, length) by the inverse STFT (overlap-add)."""
        return torch.istft(coeffs, self.window, self.hop, window=self.taper, center=True, length=length)


BASES = ("learned", "stft")


class ChannelNorm(nn.Module):
    """Per-channel normalisation over time with a learned gain and bias ("instance norm")."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(channels, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F) → (B, C, F)
        return self.norm(x)


class TDCNBlock(nn.Module):
    """1×1 → PReLU → norm → dilated depthwise conv → PReLU → norm → 1×1 × scale, + input."""

    def __init__(self, bottleneck: int, hidden: int, kernel: int, dilation: int, scale: float, eps: float):
        super().__init__()
        self.inp = nn.Conv1d(bottleneck, hidden, 1, bias=False)
        self.act1 = nn.PReLU(hidden)
        self.norm1 = ChannelNorm(hidden, eps)
        self.depthwise = nn.Conv1d(hidden, hidden, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2,
                                   groups=hidden)
        self.act2 = nn.PReLU(hidden)
        self.norm2 = ChannelNorm(hidden, eps)
        self.out = nn.Conv1d(hidden, bottleneck, 1, bias=False)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C=bottleneck, F) → same
        y = self.norm1(self.act1(self.inp(x)))  # (B, hidden, F)
        y = self.norm2(self.act2(self.depthwise(y)))  # (B, hidden, F)
        return x + self.scale * self.out(y)  # (B, bottleneck, F)


class TDCNpp(nn.Module):
    """TDCN++ mask network: dense in → repeats × blocks (dilations 1…2^(blocks-1)) → M masks."""

    def __init__(self, cfg: SeparatorConfig):
        super().__init__()
        self.num_sources, self.num_coeffs = cfg.num_sources, cfg.coefficients
        self.inp = nn.Conv1d(cfg.coefficients, cfg.bottleneck, 1, bias=True)
        self.blocks = nn.ModuleList(
            TDCNBlock(cfg.bottleneck, cfg.hidden, cfg.kernel, 2 ** b, cfg.residual_scale_init ** (r * cfg.blocks + b),
                      cfg.norm_eps)
            for r in range(cfg.repeats)
            for b in range(cfg.blocks)
        )
        self.act = nn.PReLU(cfg.bottleneck)
        self.masks = nn.Conv1d(cfg.bottleneck, cfg.num_sources * cfg.coefficients, 1, bias=True)
        # Per-source logits for the learned mixture-consistency weights.
        self.mix_weights = nn.Linear(cfg.bottleneck, cfg.num_sources) if cfg.consistency == "learned" else None

    def forward(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, F) → masks (B, M, N, F) in [0, 1], and consistency weights (B, M) or None."""
        h = self.inp(coeffs)  # (B, bottleneck, F)
        for block in self.blocks:
            h = block(h)
        h = self.act(h)
        masks = torch.sigmoid(self.masks(h))  # (B, M·N, F)
        masks = masks.view(h.shape[0], self.num_sources, self.num_coeffs, h.shape[-1])
        weights = None
        if self.mix_weights is not None:
            weights = torch.softmax(self.mix_weights(h.mean(dim=-1)), dim=-1)  # (B, M)
        return masks, weights


def mixture_consistency(
    mixture: torch.Tensor, sources: torch.Tensor, weights: torch.Tensor | str | None = "uniform", eps: float = 1e-8
) -> torch.Tensor:
    """Project sources so they sum to the mixture: ŝ_m + w_m (x − Σ ŝ).

    mixture (B, T), sources (B, M, T); ``weights`` is (B, M) summing to 1, or "uniform"
    (w = 1/M), or "magsq" (w ∝ ‖ŝ_m‖²). Returns (B, M, T); inputs are not modified.
    """
    residual = mixture - sources.sum(dim=1)  # (B, T)
    if isinstance(weights, str) or weights is None:
        if weights in (None, "uniform"):
            w = torch.full(sources.shape[:2], 1.0 / sources.shape[1], dtype=sources.dtype, device=sources.device)
        elif weights == "magsq":
            power = sources.pow(2).mean(dim=-1)  # (B, M)
            w = (power + eps) / (power + eps).sum(dim=1, keepdim=True)
        else:
            raise ValueError(f"unknown consistency weights {weights!r}")
    else:
        w = weights
    return sources + w.unsqueeze(-1) * residual.unsqueeze(1)


class Separator(nn.Module):
    """Mixture (B, T) → M sources (B, M, T) that sum to the mixture (unless consistency is none)."""

    def __init__(self, cfg: SeparatorConfig):
        super().__init__()
        if cfg.num_sources < 2:
            raise ValueError("a separator needs at least 2 sources")
        if cfg.kernel < 1 or cfg.kernel % 2 == 0:
            raise ValueError("the depthwise kernel must be odd (same-length 'same' padding)")
        if cfg.basis not in BASES:
            raise ValueError(f"unknown basis {cfg.basis!r} (choose from {', '.join(BASES)})")
        self.config = cfg
        self.basis = (STFTBasis(cfg.window, cfg.hop, cfg.compression) if cfg.basis == "stft"
                      else LearnedBasis(cfg.window, cfg.hop, cfg.num_coeffs))
        self.masknet = TDCNpp(cfg)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """mixture (B, T) or (T,) → sources (B, M, T) or (M, T)."""
        single = mixture.dim() == 1
        x = mixture.unsqueeze(0) if single else mixture  # (B, T)
        length = x.shape[-1]
        padded = self.basis.pad(x)  # (B, T')
        coeffs = self.basis.encode(padded)  # (B, N, F), complex for the STFT
        if isinstance(self.basis, STFTBasis):
            masks, weights = self.masknet(self.basis.features(padded, coeffs))  # (B, M, N, F), (B, M) | None
            masked = masks * coeffs.unsqueeze(1)  # (B, M, N, F) complex
            b, m, n, f = masked.shape
            sources = self.basis.decode(masked.reshape(b * m, n, f), padded.shape[-1]).view(b, m, -1)
        else:
            masks, weights = self.masknet(coeffs)
            masked = masks * coeffs.unsqueeze(1)  # (B, M, N, F)
            b, m, n, f = masked.shape
            sources = self.basis.decode(masked.reshape(b * m, n, f)).view(b, m, -1)
        sources = sources[..., :length]  # (B, M, T)
        mode = self.config.consistency
        if mode != "none":
            sources = mixture_consistency(x, sources, weights if mode == "learned" else mode)
        return sources[0] if single else sources


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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- storage


def save_model(model: Separator, folder: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json`` ({format_version, kind, config}) atomically."""
    return files.save_weights(folder, KIND, model.config.to_dict(), model.state_dict())


def load_separator(folder: str | Path, device: str | torch.device = "cpu") -> Separator:
    """Load a folder written by :func:`save_model` (strict: every weight must match)."""
    config, state = files.load_weights(folder, KIND)
    try:
        model = Separator(SeparatorConfig.from_dict(config))
    except (ValueError, TypeError) as exc:
        raise UsageError.of(Path(folder) / files.CONFIG_NAME, f"invalid separator config ({exc})") from None
    files.load_strict(model, state, Path(folder) / files.WEIGHTS_NAME)
    model.source = str(folder)  # how messages about the model name it
    return model.to(device).eval()
