"""Fast inference for any separator: the model's own ``forward`` over fused layers.

The layers in :mod:`birdsep.separation.layers` are written for training: channels-first
Conv1d layers, a GroupNorm module per normalisation, a ConvTranspose1d for the synthesis
basis. At inference the same arithmetic can be arranged to move far less memory, which is
what limits a CPU once the matrix multiplies run near peak. :class:`Engine` copies a model and
swaps each layer that has a *fused form* registered here (:func:`fuses`) for that form, built
from the layer's own weights; then it calls the model's own ``forward``. An architecture made
of registered layers is fast by being registered; a layer without a fused form runs as it is.
The fused forms (hand-written: no library does this folding for us):

* time-major activations (F, B, C), so every 1×1 convolution is one large GEMM over all
  frames and items (``torch.matmul``) and every per-channel operation a broadcast over rows;
* each channel norm over time folded away rather than applied: its statistics come from one
  fused read pass (batch-norm statistics over the (F, B·C) view, fp32 accumulation), the
  norm before the depthwise convolution becomes a per-channel scaling of its taps plus a
  constant (exact, with a correction of the few frames where a tap reads the zero padding),
  the norm before the output 1×1 a scaling of that GEMM's weights plus a bias row;
* the dilated depthwise convolution as oneDNN's channels-last depthwise kernel on the
  time-major memory, large dilations through its polyphase view (see FusedBlock._depthwise);
* the analysis basis as framing + GEMM, the synthesis basis as GEMM + overlap-add
  (``fold``) rather than a slow ConvTranspose1d;
* optionally bf16 for the blocks' activations and GEMM operands (AVX-512-BF16 / AMX on
  CPUs, tensor cores on GPUs), accumulating in fp32. The residual stream, the first block,
  the mask head, the bases and the mixture consistency stay fp32: measured on real
  recordings, those are what keep quiet sources within 40 dB SI-SNR of fp32 (the first block
  and the mask head in bf16 cost 20–30 dB, the other blocks together ~1 dB).

``Engine(model, dtype)(mixture)`` returns what ``model(mixture)`` returns, to fp32 rounding
in fp32 (tests: > 70 dB SI-SNR, typically 80–130) and within ≥ 40 dB SI-SNR in bf16 (the tests check the
shipped model on real recordings).

Shapes: B batch, F frames, C bottleneck channels, H hidden channels, N basis coefficients,
M sources, T samples, W basis window.
"""
from __future__ import annotations

import copy
import weakref
from typing import Callable

import torch
import torch.nn.functional as Fn
from torch import nn

from birdsep.separation.layers import LearnedBasis, STFTBasis, TDCNpp


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32, copy=True)


def _prelu(a: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """PReLU over the last axis of (..., H) (one pass)."""
    return Fn.prelu(a.reshape(-1, a.shape[-1]), alpha).view(a.shape)


def _norm_affine(a: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, eps: float):
    """Per-item, per-channel norm over time of a (F, B, H), as an affine map a·scale + shift.

    In time-major layout the statistics are those of batch norm over the rows of the
    (F, B·H) view: one read pass with fp32 accumulation (ATen's batch_norm_update_stats).
    Returns scale, shift (B·H,) in fp32; the norm itself is never applied as a pass of its own.
    """
    frames, b, h = a.shape
    dummy = torch.zeros(b * h, device=a.device), torch.ones(b * h, device=a.device)  # running stats, unused
    mean, var = torch.ops.aten.batch_norm_update_stats(a.view(frames, b * h), *dummy, 0.0)
    scale = gain.repeat(b) * torch.rsqrt(var + eps)
    return scale, bias.repeat(b) - mean * scale


#: Largest dilation oneDNN's channels-last depthwise kernel handles fast (AVX-512, torch 2.14).
_FAST_DILATION = 4

#: Blocks kept in fp32 at reduced precision (see Engine._build).
FP32_LEADING_BLOCKS = 1


class FusedBlock:
    """One TDCN++ block's weights (:class:`~birdsep.separation.layers.TDCNBlock`), rearranged for the
    time-major forward of :class:`BlockStack`."""

    def __init__(self, block, dtype: torch.dtype):
        self.dtype = dtype
        self.w_in = block.inp.weight[:, :, 0].t().to(dtype, copy=True).contiguous()  # (C, H)
        self.alpha1 = block.act1.weight.to(dtype, copy=True)  # (H,)
        self.alpha2 = block.act2.weight.to(dtype, copy=True)
        n1, n2 = block.norm1.norm, block.norm2.norm
        self.norm1 = (_f32(n1.weight), _f32(n1.bias), n1.eps)
        self.norm2 = (_f32(n2.weight), _f32(n2.bias), n2.eps)
        dw = block.depthwise
        self.taps = _f32(dw.weight[:, 0, :])  # (H, K): scaled per call by norm1
        self.dw_bias = _f32(dw.bias) if dw.bias is not None else torch.zeros(dw.out_channels)
        self.dilation, self.kernel = dw.dilation[0], dw.kernel_size[0]
        self.phases = 1 if self.dilation <= _FAST_DILATION else self.dilation  # polyphase factor
        self.w_out = _f32(block.out.weight[:, :, 0].t()).contiguous()  # (H, C): scaled per call by norm2
        self.scale = float(block.scale.detach())

    def __call__(self, h: torch.Tensor, workspace) -> torch.Tensor:
        """h (F, B, C) fp32 residual stream → updated in place and returned.

        ``workspace(dtype)`` is a zeroed (F', B, H) buffer, F' ≥ F a multiple of every block's
        polyphase factor: the input GEMM writes its first F rows, so the rows beyond stay zero
        and the depthwise conv reads them as its padding without a padded copy.
        """
        frames, b, _ = h.shape
        buf = workspace(self.dtype)  # (F', B, H)
        torch.mm(h.to(self.dtype).view(frames * b, -1), self.w_in, out=buf.view(-1, buf.shape[-1])[: frames * b])
        a = _prelu(buf, self.alpha1)  # (F', B, H), zero beyond F
        y = self._depthwise(a, frames, *_norm_affine(a[:frames], *self.norm1))  # (F, B, H) = depthwise(norm1(a))
        p = _prelu(y, self.alpha2)
        scale, shift = _norm_affine(p, *self.norm2)  # (B·H,)
        if b == 1:  # out(norm2(p)) = p·(scale ⊙ W) + shift·W: the norm rides on the GEMM
            out = torch.addmm((shift @ self.w_out).to(self.dtype), p.view(frames, -1),
                              (scale[:, None] * self.w_out).to(self.dtype))  # (F, C)
        else:
            p = torch.addcmul(shift.to(self.dtype), p.view(frames, -1), scale.to(self.dtype)).view(p.shape)
            out = torch.matmul(p, self.w_out.to(self.dtype))  # (F, B, C)
        return h.add_(out.view(h.shape), alpha=self.scale)

    def _depthwise(self, a: torch.Tensor, frames: int, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Dilated depthwise conv with zero padding along time of a·scale + shift: a (F', B, H)
        holds the F frames and zeros beyond; returns (F, B, H).

        The norm folds into the conv: Σ_k w_k (a[t+o_k]·s + t) = Σ_k (w_k s) a[t+o_k] + t Σ_k w_k,
        except where tap k reads the zero padding (contributing 0, not w_k t): those few
        frames at each end are corrected after.

        In time-major memory (F, B, H) is a channels-last (1, B·H, 1, F) image, so oneDNN's
        channels-last depthwise kernel applies directly — but it is fast only for dilations
        up to 4 (~10× slower from 8 on, measured). A conv with dilation d is also d undilated
        convs over the polyphase sequences a[j::d], and (F, B, H) viewed as (F/d, d·B·H) holds
        exactly those as d·B·H channels: one undilated conv with the taps repeated, after
        zero-padding F to a multiple of d (zeros the conv's own padding would read anyway).
        """
        total, b, h = a.shape
        d, k = self.dilation, self.kernel
        taps = self.taps.repeat(b, 1) * scale[:, None]  # (B·H, K)
        const = shift * self.taps.sum(1).repeat(b) + self.dw_bias.repeat(b)  # (B·H,)
        phases = self.phases
        rows = -(-total // phases)  # ceil(F' / phases)
        if rows * phases != total:  # not with the Engine's workspace
            a = Fn.pad(a, (0, 0, 0, 0, 0, rows * phases - total))
        c = phases * b * h
        x = a.as_strided((1, c, 1, rows), (rows * c, 1, rows * c, c))  # (1, channels, 1, rows) channels-last
        weight = taps.to(a.dtype).repeat(phases, 1)[:, None, None, :]  # (channels, 1, 1, K)
        step = d // phases
        y = Fn.conv2d(x, weight, const.to(a.dtype).repeat(phases), dilation=(1, step),
                      padding=(0, step * (k - 1) // 2), groups=c)
        y = y.as_strided((frames, b * h), (b * h, 1))  # (F, B·H): the same memory, padding dropped
        for j in range(k):
            o = (j - (k - 1) // 2) * d  # tap j reads a[t + o]
            edge = (shift * self.taps[:, j].repeat(b)).to(y.dtype)  # (B·H,)
            if o < 0:
                y[: min(frames, -o)].sub_(edge)
            elif o > 0:
                y[max(0, frames - o):].sub_(edge)
        return y.view(frames, b, h)


# ----------------------------------------------------------------------------- fused forms

#: layer class → function (layer, dtype) → its fused inference form (an nn.Module with the
#: layer's call signature), or None where this layer cannot be fused.
FUSIONS: dict[type, Callable[[nn.Module, torch.dtype], nn.Module | None]] = {}


def fuses(cls: type):
    """Register the decorated function (layer, dtype) → fused module as ``cls``'s fused form."""
    def register(fn):
        FUSIONS[cls] = fn
        return fn
    return register


class BlockStack:
    """The time-major machinery every fused mask network shares: TDCN++ blocks as
    :class:`FusedBlock` (the first ``FP32_LEADING_BLOCKS`` in fp32), the dense input layer into the
    residual stream, a shared zeroed workspace, and the sigmoid mask head."""

    def __init__(self, inp: nn.Conv1d, blocks, masks: nn.Conv1d, dtype: torch.dtype):
        f32 = torch.float32
        self.w_in = inp.weight.detach()[:, :, 0].t().to(f32, copy=True).contiguous()  # (N, C)
        self.b_in = inp.bias.detach().to(f32, copy=True) if inp.bias is not None else None
        # The first block (raw input dynamic range) and the mask head set the accuracy of quiet
        # sources: in bf16 they cost 20–30 dB of SI-SNR against fp32, the other blocks ~1 dB.
        self.blocks = [FusedBlock(b, f32 if i < FP32_LEADING_BLOCKS else dtype) for i, b in enumerate(blocks)]
        self.hidden = blocks[0].inp.out_channels if len(blocks) else 0
        self.w_mask = masks.weight.detach()[:, :, 0].to(f32, copy=True)  # (M·N, C)
        self.b_mask = masks.bias.detach().to(f32, copy=True) if masks.bias is not None else None

    def enter(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, F) → the residual stream (F, B, C), time-major."""
        b, n, _ = features.shape
        x = features.float().transpose(1, 2).reshape(-1, n)  # (B·F, N)
        h = torch.addmm(self.b_in, x, self.w_in) if self.b_in is not None else x @ self.w_in  # (B·F, C)
        return h.view(b, -1, self.w_in.shape[1]).transpose(0, 1).contiguous()

    def workspace(self, h: torch.Tensor):
        """``workspace(dtype)``: one zeroed (F', B, H) buffer per dtype shared by the blocks, F' the
        frames rounded up to every block's polyphase factor."""
        rows = max((block.phases for block in self.blocks), default=1)
        rows = -(-h.shape[0] // rows) * rows
        buffers = {}

        def get(dtype):
            if dtype not in buffers:
                buffers[dtype] = torch.zeros(rows, h.shape[1], self.hidden, dtype=dtype, device=h.device)
            return buffers[dtype]
        return get

    def head(self, h: torch.Tensor, sources: int) -> torch.Tensor:
        """(F, B, C) → sigmoid masks (B, M, N, F), a view of time-major memory (F, B, M, N): one GEMM
        over all frames, and the coefficients of a frame side by side, as the STFT holds them."""
        frames, b, c = h.shape
        w = self.w_mask.t()  # (C, M·N)
        masks = (torch.addmm(self.b_mask, h.reshape(-1, c), w) if self.b_mask is not None
                 else h.reshape(-1, c) @ w)  # (F·B, M·N)
        return masks.sigmoid_().view(frames, b, sources, -1).permute(1, 2, 3, 0)


class FusedTDCNpp(nn.Module):
    """A :class:`~birdsep.separation.layers.TDCNpp` for inference: (B, N, F) → masks (B, M, N, F),
    weights (B, M) | None, time-major inside, the norms folded (see the module docstring)."""

    def __init__(self, net: TDCNpp, dtype: torch.dtype):
        super().__init__()
        self.num_sources = net.num_sources
        self.stack = BlockStack(net.inp, net.blocks, net.masks, dtype)
        self.alpha = net.act.weight.detach().to(torch.float32, copy=True)
        self.mix_weights = net.mix_weights

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.stack.enter(features)  # (F, B, C)
        workspace = self.stack.workspace(h)
        for block in self.stack.blocks:
            h = block(h, workspace)
        h = _prelu(h, self.alpha)
        weights = None
        if self.mix_weights is not None:
            weights = torch.softmax(self.mix_weights(h.float().mean(dim=0)), dim=-1)  # (B, M)
        return self.stack.head(h, self.num_sources), weights


@fuses(TDCNpp)
def _fuse_tdcnpp(net: TDCNpp, dtype: torch.dtype) -> nn.Module | None:
    kernels = {block.depthwise.kernel_size[0] for block in net.blocks}
    return FusedTDCNpp(net, dtype) if all(k % 2 == 1 for k in kernels) else None


class FusedLearnedBasis(nn.Module):
    """A :class:`~birdsep.separation.layers.LearnedBasis` for inference: the analysis as
    framing + GEMM, the synthesis as GEMM + overlap-add (``fold``), not a ConvTranspose1d."""

    def __init__(self, basis: LearnedBasis, dtype: torch.dtype):
        super().__init__()
        self.window, self.hop = basis.window, basis.hop
        self.frames_for, self.pad = basis.frames_for, basis.pad
        self.analysis = basis.analysis.weight.detach()[:, 0, :].float().clone()  # (N, W)
        self.synthesis_t = basis.synthesis.weight.detach()[:, 0, :].t().float().contiguous()  # (W, N)

    def analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = x.float().unfold(-1, self.window, self.hop)  # (B, F, W), a view
        coeffs = torch.relu(frames @ self.analysis.t()).transpose(1, 2)  # (B, N, F), time-major memory
        return coeffs, coeffs

    def synthesise(self, masks: torch.Tensor, coeffs: torch.Tensor, length: int) -> torch.Tensor:
        b, m, n, f = masks.shape
        masked = masks * coeffs[:, None]  # (B, M, N, F), time-major memory as the head's masks
        cols = self.synthesis_t @ masked.reshape(b * m, n, f)  # (B·M, W, F)
        total = self.window + (f - 1) * self.hop
        sources = Fn.fold(cols, (1, total), (1, self.window), stride=(1, self.hop))  # (B·M, 1, 1, T')
        return sources.view(b, m, total)


@fuses(LearnedBasis)
def _fuse_learned_basis(basis: LearnedBasis, dtype: torch.dtype) -> nn.Module:
    return FusedLearnedBasis(basis, dtype)


class FusedSTFTBasis(nn.Module):
    """An :class:`~birdsep.separation.layers.STFTBasis` for inference: the same analysis; the
    synthesis one source at a time, so that a block holds one source's masked coefficients and
    frames at once rather than all M (a 12 s block at 32 kHz peaked ~100 MB above the model; two
    blocks are separated at once), and its inverse STFT written out (hand-written: ``torch.istft``
    overlap-adds through a general col2im, twice per call, once for the window's envelope):

    * the inverse FFT of each frame along the coefficients, which the time-major masks leave side
      by side, times the synthesis window;
    * the overlap-add as W/hop shifted adds of (F, hop) slices;
    * the division by the window's overlap-added square (its envelope), computed once per frame
      count and kept, then the centring trimmed: what ``torch.istft(center=True, length=…)`` does.
    """

    def __init__(self, basis: STFTBasis, dtype: torch.dtype):
        super().__init__()
        self.basis = basis
        self.frames_for, self.pad, self.analyse = basis.frames_for, basis.pad, basis.analyse
        self.window, self.hop = basis.window, basis.hop
        self.overlaps = basis.window // basis.hop if basis.window % basis.hop == 0 else 0  # 0: not whole, torch.istft
        self._envelopes: dict = {}

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, W) → (B, W + (F − 1)·hop): frame f added at f·hop."""
        b, f, _ = frames.shape
        k, hop = self.overlaps, self.hop
        out = torch.zeros(b, f + k - 1, hop, device=frames.device, dtype=frames.dtype)
        parts = frames.view(b, f, k, hop)
        for j in range(k):
            out[:, j : j + f] += parts[:, :, j]
        return out.view(b, -1)

    def _inverse_envelope(self, frames: int, length: int, device) -> torch.Tensor:
        """(length,) 1 / Σ_f window²(t − f·hop) over the samples kept after the centring."""
        key = (frames, length, str(device))
        if key not in self._envelopes:
            if len(self._envelopes) > 8:
                self._envelopes.clear()
            square = self.basis.taper.to(device).pow(2)  # (W,)
            env = self._overlap_add(square.expand(1, frames, -1).contiguous())[0]
            start = self.window // 2
            self._envelopes[key] = 1.0 / env[start : start + length]
        return self._envelopes[key]

    def _decode(self, coeffs: torch.Tensor, length: int) -> torch.Tensor:
        """(B, N, F) complex → (B, length): ``basis.decode``'s inverse STFT."""
        if not self.overlaps:
            return self.basis.decode(coeffs, length)
        frames = torch.fft.irfft(coeffs.transpose(1, 2), n=self.window, dim=-1)  # (B, F, W)
        frames.mul_(self.basis.taper)
        y = self._overlap_add(frames)  # (B, W + (F − 1)·hop)
        start = self.window // 2
        return y[:, start : start + length] * self._inverse_envelope(coeffs.shape[-1], length, coeffs.device)

    def synthesise(self, masks: torch.Tensor, coeffs: torch.Tensor, length: int) -> torch.Tensor:
        """real masks (B, M, N, F) × complex coefficients (B, N, F) → (B, M, ``length``)."""
        b, m = masks.shape[:2]
        out = torch.empty(b, m, length, device=coeffs.device)
        for k in range(m):
            out[:, k] = self._decode(masks[:, k] * coeffs, length)  # (B, length)
        return out


@fuses(STFTBasis)
def _fuse_stft_basis(basis: STFTBasis, dtype: torch.dtype) -> nn.Module:
    return FusedSTFTBasis(basis, dtype)


def fuse(model: nn.Module, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, list[str], list[str]]:
    """A copy of ``model`` with every layer that has a fused form swapped for it.

    Returns (the copy, names of the fused layers, names of the layers that have parameters
    and run as they are). The caller's model is not changed.
    """
    fused, unfused = [], []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in list(module.named_children()):
            path = f"{prefix}{name}"
            fusion = FUSIONS.get(type(child))
            replacement = fusion(child, dtype) if fusion is not None else None
            if replacement is not None:
                setattr(module, name, replacement)
                fused.append(path)
            else:
                if any(True for _ in child.parameters(recurse=False)):
                    unfused.append(path)
                walk(child, path + ".")

    with torch.no_grad():
        copied = copy.deepcopy(model)
        if type(copied) in FUSIONS:
            whole = FUSIONS[type(copied)](copied, dtype)
            if whole is not None:
                return whole, [""], []
        walk(copied, "")
        if any(True for _ in copied.parameters(recurse=False)):
            unfused.append("(the model itself)")
    return copied.eval(), fused, unfused


class Engine:
    """Fast inference for a separator: ``Engine(model, torch.bfloat16)(mixture (B, T)) → (B, M, T)``.

    Runs the model's own ``forward`` over a copy whose registered layers are fused
    (:func:`fuse`): ``fused`` and ``unfused`` name the layers that were and were not. When
    nothing could be fused, bf16 runs the model under autocast (and restores the sum of the
    sources that rounding loses). Weights are copied when the engine is built: rebuild after
    changing the model. Runs under ``torch.inference_mode`` on the model's device.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.config = getattr(model, "config", None)
        self.model, self.fused, self.unfused = fuse(model, dtype)

    @torch.inference_mode()
    def __call__(self, mixture: torch.Tensor) -> torch.Tensor:
        """mixture (B, T) or (T,) → sources (B, M, T) or (M, T), fp32."""
        x = mixture.float()
        if self.dtype == torch.float32 or self.fused:
            return self.model(x).float()
        with torch.autocast(x.device.type, dtype=self.dtype):
            y = self.model(x).float()
        return y + ((x - y.sum(-2)) / y.shape[-2]).unsqueeze(-2)  # restore the sum lost to rounding


#: raised whenever a fused form's arithmetic or layout changes, so that measured choices
#: (``--precision auto``'s speed-ups) are measured again. 2: time-major masks, block workers'
#: one-thread timing, the STFT synthesis written out (2026-12-08)
ENGINE_REVISION = 2


def signature(model: nn.Module) -> str:
    """What decides the engine's arithmetic for ``model`` beside its weights (for caches of
    measured choices): its class, the fused forms that apply, their precision policy and
    :data:`ENGINE_REVISION`."""
    kinds = sorted({type(m).__name__ for m in model.modules() if type(m) in FUSIONS})
    return (f"{type(model).__name__}/fused:{','.join(kinds) or '-'}/fp32-leading:{FP32_LEADING_BLOCKS}"
            f"/engine:{ENGINE_REVISION}")


# ----------------------------------------------------------------------------- engines per model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

_engines: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()


def engine_for(model: torch.nn.Module, precision: str = "fp32", device: str | torch.device = "cpu"):
    """The model's engine for ``precision`` (fp32 | bf16) on ``device``, built once and cached
    with the model. A callable (B, T) → (B, M, T).

    The caller's model is left as it is (a model on another device is copied there). Weights
    are copied when the engine is built: after changing a model's weights, use a new model
    object (or ``forget(model)``). Which precision to use is :mod:`birdsep.separation.runtime`'s
    business.
    """
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r} ({' | '.join(DTYPES)})")
    cache = _engines.setdefault(model, {})
    key = (precision, str(device))
    if key not in cache:
        here = model if _is_on(model, torch.device(device)) else copy.deepcopy(model).to(device)
        cache[key] = Engine(here, DTYPES[precision])
    return cache[key]


def _is_on(model: torch.nn.Module, device: torch.device) -> bool:
    p = next(model.parameters(), None)
    return p is None or p.device == device or (device.index is None and p.device.type == device.type)


def forget(model: torch.nn.Module) -> None:
    """Drop the engines cached for ``model``."""
    _engines.pop(model, None)
