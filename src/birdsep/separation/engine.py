"""A fast inference engine for a trained :class:`~birdsep.separation.model.Separator`.

The model in ``model.py`` is written for training: channels-first Conv1d layers, a
GroupNorm module per normalisation, a ConvTranspose1d for the synthesis basis. At
inference the same arithmetic can be arranged to move far less memory, which is what limits
a CPU once the matrix multiplies run near peak. This module restates the forward pass
(hand-written: no library does this folding for us) over the *same weights*:

* time-major activations (F, B, C), so every 1×1 convolution is one large GEMM over all
  frames and items (``torch.matmul``) and every per-channel operation a broadcast over rows;
* each channel norm over time folded away rather than applied: its statistics come from one
  fused read pass (batch-norm statistics over the (F, B·C) view, fp32 accumulation), the
  norm before the depthwise convolution becomes a per-channel scaling of its taps plus a
  constant (exact, with a correction of the few frames where a tap reads the zero padding),
  the norm before the output 1×1 a scaling of that GEMM's weights plus a bias row;
* the dilated depthwise convolution as oneDNN's channels-last depthwise kernel on the
  time-major memory, large dilations through its polyphase view (see _Block._depthwise);
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

import torch
import torch.nn.functional as Fn

from birdsep.separation.model import Separator, STFTBasis, mixture_consistency


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


class _Block:
    """One TDCN++ block's weights, rearranged for the time-major forward."""

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


class Engine:
    """Fast inference for a Separator: ``Engine(model, torch.bfloat16)(mixture (B, T)) → (B, M, T)``.

    Holds rearranged copies of the weights (taken when built: rebuild after changing the
    model). Runs under ``torch.inference_mode`` on the model's device.
    """

    def __init__(self, model: Separator, dtype: torch.dtype = torch.float32):
        if model.config.kernel % 2 != 1:
            raise ValueError("the inference engine needs an odd depthwise kernel")
        with torch.no_grad():
            self._build(model, dtype)

    def _build(self, model: Separator, dtype: torch.dtype) -> None:
        f32 = torch.float32
        cfg = model.config
        self.config, self.dtype = cfg, dtype
        self.window, self.hop = model.basis.window, model.basis.hop
        self.frames_for, self.pad = model.basis.frames_for, model.basis.pad
        self.stft = model.basis if isinstance(model.basis, STFTBasis) else None  # parameter-free: used as is
        if self.stft is None:
            analysis = model.basis.analysis.weight.detach()[:, 0, :].to(f32, copy=True)  # (N, W)
            self.analysis, self.analysis_t = analysis.t().contiguous(), analysis  # (W, N), (N, W)
            self.synthesis_t = model.basis.synthesis.weight.detach()[:, 0, :].t().to(f32, copy=True).contiguous()  # (W, N)
        net = model.masknet
        self.w_in = net.inp.weight.detach()[:, :, 0].t().to(f32, copy=True).contiguous()  # (N, C)
        self.b_in = net.inp.bias.detach().to(f32, copy=True)
        # The first block (raw input dynamic range) and the mask head set the accuracy of quiet
        # sources: in bf16 they cost 20–30 dB of SI-SNR against fp32, the other blocks ~1 dB.
        self.blocks = [_Block(b, f32 if i < FP32_LEADING_BLOCKS else dtype) for i, b in enumerate(net.blocks)]
        self.hidden = cfg.hidden
        self.alpha = net.act.weight.detach().to(f32, copy=True)
        self.w_mask_t = net.masks.weight.detach()[:, :, 0].to(f32, copy=True)  # (M·N, C)
        self.b_mask = net.masks.bias.detach().to(f32, copy=True)
        self.mix_weights = net.mix_weights

    @torch.inference_mode()
    def __call__(self, mixture: torch.Tensor) -> torch.Tensor:
        """mixture (B, T) or (T,) → sources (B, M, T) or (M, T), fp32."""
        single = mixture.dim() == 1
        x = (mixture.unsqueeze(0) if single else mixture).float()  # (B, T)
        b, length = x.shape
        m, n = self.config.num_sources, self.config.coefficients
        padded = self.pad(x)  # (B, T')
        if self.stft is not None:
            spec = self.stft.encode(padded)  # (B, N, F) complex
            coeffs = self.stft.features(padded, spec).permute(2, 0, 1)  # (F, B, N) time-major for the blocks
        else:
            frames = padded.unfold(-1, self.window, self.hop)  # (B, F, W), a view
            coeffs = torch.relu(frames.transpose(0, 1) @ self.analysis)  # (F, B, N) time-major for the blocks
        h = torch.addmm(self.b_in, coeffs.reshape(-1, n), self.w_in).view(*coeffs.shape[:2], -1)  # (F, B, C)
        rows = max(block.phases for block in self.blocks)
        rows = -(-h.shape[0] // rows) * rows  # F rounded up to every block's polyphase factor
        buffers = {}

        def workspace(dtype):  # one zeroed (F', B, H) buffer per dtype, shared by the blocks
            if dtype not in buffers:
                buffers[dtype] = torch.zeros(rows, b, self.hidden, dtype=dtype, device=h.device)
            return buffers[dtype]

        for block in self.blocks:
            h = block(h, workspace)
        h = _prelu(h, self.alpha)
        # The head runs channels-first, so that synthesis frames come out as fold wants them:
        # no transposing copies of the (B, M, N, F) masked coefficients.
        masks = torch.matmul(self.w_mask_t, h.permute(1, 2, 0)).add_(self.b_mask[:, None]).sigmoid_()  # (B, M·N, F)
        if self.stft is not None:
            masked = masks.view(b, m, n, -1) * spec[:, None]  # (B, M, N, F) complex
            sources = self.stft.decode(masked.view(b * m, n, -1), padded.shape[-1]).view(b, m, -1)[..., :length]
            return self._consistent(x, sources, h, single)
        coeffs_t = torch.relu(self.analysis_t @ frames.transpose(1, 2))  # (B, N, F)
        masked = masks.view(b, m, n, -1).mul_(coeffs_t[:, None])  # (B, M, N, F)
        cols = self.synthesis_t @ masked.view(b * m, n, -1)  # (B·M, W, F)
        nf = cols.shape[-1]
        total = self.window + (nf - 1) * self.hop
        sources = Fn.fold(cols, (1, total), (1, self.window), stride=(1, self.hop))  # (B·M, 1, 1, T')
        sources = sources.view(b, m, total)[..., :length]  # (B, M, T)
        return self._consistent(x, sources, h, single)

    def _consistent(self, x: torch.Tensor, sources: torch.Tensor, h: torch.Tensor, single: bool) -> torch.Tensor:
        """Mixture consistency of sources (B, M, T) with x (B, T); h (F, B, C) for learned weights."""
        mode = self.config.consistency
        if mode != "none":
            weights = mode
            if mode == "learned":
                weights = torch.softmax(self.mix_weights(h.float().mean(dim=0)), dim=-1)  # (B, M)
            sources = mixture_consistency(x, sources, weights)
        return sources[0] if single else sources


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
        supported = isinstance(here, Separator) and here.config.kernel % 2 == 1
        cache[key] = Engine(here, DTYPES[precision]) if supported else _Reference(here, DTYPES[precision])
    return cache[key]


def _is_on(model: torch.nn.Module, device: torch.device) -> bool:
    p = next(model.parameters(), None)
    return p is None or p.device == device or (device.index is None and p.device.type == device.type)


class _Reference:
    """Any other separator module (even kernels, test doubles): its own forward, autocast for bf16."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        self.model, self.dtype = model, dtype

    @torch.inference_mode()
    def __call__(self, mixture: torch.Tensor) -> torch.Tensor:
        x = mixture.float()
        if self.dtype == torch.float32:
            return self.model(x)
        with torch.autocast(x.device.type, dtype=self.dtype):
            y = self.model(x).float()
        return y + ((x - y.sum(-2)) / y.shape[-2]).unsqueeze(-2)  # restore the sum lost to rounding


def forget(model: torch.nn.Module) -> None:
    """Drop the engines cached for ``model``."""
    _engines.pop(model, None)
