"""The building blocks separators are made of, written once for training and inference.

* bases: :class:`LearnedBasis` (a framed dense layer + ReLU and a learned overlap-add
  synthesis, Wisdom et al.) and :class:`STFTBasis` (sqrt-Hann STFT, the mask network reading
  the power-law compressed magnitude of the RMS-normalised mixture);
* :class:`TDCNpp`, the TDCN++ mask network of Kavalerov et al. as used by MixIT;
* :func:`mixture_consistency`;
* :class:`MaskingSeparator`: basis → mask network → masks × coefficients → synthesis →
  mixture consistency. Its ``forward`` is the one definition of a masking separator's pass;
  :mod:`birdsep.separation.engine` runs the same ``forward`` after swapping registered layers
  for fused inference forms of themselves.

An architecture (:mod:`birdsep.separation.architectures`) composes these layers (or its own).

Shapes use fixed letters: B batch, M sources, N basis coefficients, T samples, F frames,
C bottleneck channels, H hidden channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import nn


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

    def analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T') → coefficients the masks multiply (B, N, F) and what the mask network reads (the same)."""
        coeffs = self.encode(x)
        return coeffs, coeffs

    def decode(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B·M, N, F) → (B·M, T') by overlap-add of the synthesis basis."""
        return self.synthesis(coeffs).squeeze(1)

    def synthesise(self, masks: torch.Tensor, coeffs: torch.Tensor, length: int) -> torch.Tensor:
        """masks (B, M, N, F) × coefficients (B, N, F) → (B, M, T') with T' = ``length``."""
        masked = masks * coeffs.unsqueeze(1)  # (B, M, N, F)
        b, m, n, f = masked.shape
        return self.decode(masked.reshape(b * m, n, f)).view(b, m, -1)


class STFTBasis(nn.Module):
    """Short-time Fourier transform analysis and its overlap-add inverse (no parameters).

    ``encode`` gives the complex coefficients the masks multiply; ``features`` what the mask
    network reads: the magnitude of the RMS-normalised mixture, compressed by a power law, so
    that the separator is exactly scale-equivariant.
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

    def analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T') → complex coefficients (B, N, F) and the mask network's features (B, N, F)."""
        coeffs = self.encode(x)
        return coeffs, self.features(x, coeffs)

    def decode(self, coeffs: torch.Tensor, length: int) -> torch.Tensor:
        """(B·M, N, F) complex → (B·M, length) by the inverse STFT (overlap-add)."""
        return torch.istft(coeffs, self.window, self.hop, window=self.taper, center=True, length=length)

    def synthesise(self, masks: torch.Tensor, coeffs: torch.Tensor, length: int) -> torch.Tensor:
        """real masks (B, M, N, F) × complex coefficients (B, N, F) → (B, M, ``length``)."""
        masked = masks * coeffs.unsqueeze(1)  # (B, M, N, F) complex
        b, m, n, f = masked.shape
        return self.decode(masked.reshape(b * m, n, f), length).view(b, m, -1)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F) → same
        y = self.norm1(self.act1(self.inp(x)))  # (B, H, F)
        y = self.norm2(self.act2(self.depthwise(y)))  # (B, H, F)
        return x + self.scale * self.out(y)  # (B, C, F)


class TDCNpp(nn.Module):
    """TDCN++ mask network: dense in → repeats × blocks (dilations 1…2^(blocks-1)) → M sigmoid masks.

    ``learned_weights`` adds a head for per-source mixture-consistency weights.
    """

    def __init__(self, coefficients: int, num_sources: int, bottleneck: int, hidden: int, kernel: int, repeats: int,
                 blocks: int, residual_scale_init: float = 0.9, eps: float = 1e-8, learned_weights: bool = False):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError("the depthwise kernel must be odd (same-length 'same' padding)")
        self.num_sources, self.num_coeffs = num_sources, coefficients
        self.inp = nn.Conv1d(coefficients, bottleneck, 1, bias=True)
        self.blocks = nn.ModuleList(
            TDCNBlock(bottleneck, hidden, kernel, 2 ** b, residual_scale_init ** (r * blocks + b), eps)
            for r in range(repeats)
            for b in range(blocks)
        )
        self.act = nn.PReLU(bottleneck)
        self.masks = nn.Conv1d(bottleneck, num_sources * coefficients, 1, bias=True)
        self.mix_weights = nn.Linear(bottleneck, num_sources) if learned_weights else None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, F) → masks (B, M, N, F) in [0, 1], and consistency weights (B, M) or None."""
        h = self.inp(features)  # (B, C, F)
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


CONSISTENCY = ("uniform", "learned", "magsq", "none")


class MaskingSeparator(nn.Module):
    """Mixture (B, T) → M sources (B, M, T): ``basis`` analyses, ``masknet`` masks, ``basis``
    synthesises, and the sources are projected to sum to the mixture (``consistency``).

    Subclasses build ``self.basis`` (``pad``, ``analyse``, ``synthesise``), ``self.masknet``
    ((B, N, F) → masks (B, M, N, F), weights (B, M) | None) and set ``self.config`` (with
    ``consistency``, ``num_sources`` and ``sample_rate``).
    """

    config: object
    basis: nn.Module
    masknet: nn.Module

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """mixture (B, T) or (T,) → sources (B, M, T) or (M, T)."""
        single = mixture.dim() == 1
        x = mixture.unsqueeze(0) if single else mixture  # (B, T)
        padded = self.basis.pad(x)  # (B, T')
        coeffs, features = self.basis.analyse(padded)  # (B, N, F) (complex for the STFT), (B, N, F)
        masks, weights = self.masknet(features)  # (B, M, N, F), (B, M) | None
        sources = self.basis.synthesise(masks, coeffs, padded.shape[-1])[..., : x.shape[-1]]  # (B, M, T)
        mode = self.config.consistency
        if mode != "none":
            sources = mixture_consistency(x, sources, weights if mode == "learned" else mode)
        return sources[0] if single else sources


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
