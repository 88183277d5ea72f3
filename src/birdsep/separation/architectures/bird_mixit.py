"""Google's published bird MixIT separators (Denton, Wisdom & Hershey, ICASSP 2022), as trained,
and the converter of their TensorFlow checkpoints (google-research/sound-separation,
``models/bird_mixit``; code and weights Apache-2.0).

The published graph is ``separate_waveforms`` of the MixIT model code
(``models/neurips2020_mixit/model.py`` with ``models/train/network.py``), and differs from
birdsep's ``tdcnpp-learned`` in four places, each kept here:

* **skip connections**: the "improved TDCN++" with ``add_skip_residual_connections``: the input
  of the first block of repeat k receives, for every earlier repeat j, a dense layer (with bias)
  of the input of repeat j's first block (6 layers for 4 repeats);
* **no last PReLU and no mask bias**: the last block's output goes straight to the mask layer
  (a dense layer without bias);
* **norms**: Keras ``LayerNormalization`` over time with one scalar gain and offset per norm
  and its default epsilon, 1e-3 (birdsep's per-channel norms hold the scalar in every channel);
  PReLUs with one scalar slope (likewise);
* **consistency** ``magsq`` (weights ∝ each source's power), computed on the input padded at the
  end to a multiple of the hop, the outputs then cropped: what the published graph does.

Every dense layer of the TF graph has a learnable scalar after it (``dense_scale``); the
converter folds it into the layer's weights (exact up to rounding), except the block outputs'
scales, which are :class:`~birdsep.separation.layers.TDCNBlock`'s own ``scale``.

The basis (:class:`~birdsep.separation.layers.LearnedBasis`: 22-sample window, 11-sample hop at
22.05 kHz, 256 coefficients), the blocks (:class:`~birdsep.separation.layers.TDCNBlock`) and
the consistency (:func:`~birdsep.separation.layers.mixture_consistency`) are birdsep's own; the
mask network with its skip connections is :class:`SkipTDCN` below, with a fused inference form
registered with :mod:`birdsep.separation.engine` (its blocks run as the engine runs TDCN++'s).

Proof of equality: ``benchmarks/bird_mixit_reference.py`` runs the upstream TF code with random
weights; ``tests/test_bird_mixit.py`` converts its checkpoints and compares (≥ 60 dB SNR).

Shapes: B batch, M sources, N basis coefficients, T samples, F frames, C bottleneck, H hidden.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn

from birdsep.errors import UsageError
from birdsep.separation.architectures import Architecture, register
from birdsep.separation.layers import CONSISTENCY, LearnedBasis, MaskingSeparator, TDCNBlock

SOURCE_URL = "https://github.com/google-research/sound-separation/tree/master/models/bird_mixit"
CHECKPOINTS_URL = "https://storage.googleapis.com/gresearch/sound_separation/bird_mixit_model_checkpoints"
LICENCE = "Apache-2.0"


@dataclass(frozen=True)
class BirdMixITConfig:
    """The published bird MixIT separator's sizes; stored as JSON beside its weights."""

    sample_rate: int = 22050
    num_sources: int = 4  # M: 4 or 8 published
    window_ms: float = 1.0  # learned basis: 22 samples
    hop_ms: float = 0.5  # 11 samples
    num_coeffs: int = 256  # N
    bottleneck: int = 256  # C
    hidden: int = 512  # H
    kernel: int = 3
    repeats: int = 4
    blocks: int = 8  # per repeat; dilations 1 … 2**(blocks-1)
    skip_connections: bool = True  # dense skips between the repeats' first blocks
    norm_eps: float = 1e-3  # Keras LayerNormalization's default
    consistency: str = "magsq"  # uniform | magsq | none (learned weights are not part of this graph)
    clip_seconds: float = 6.0  # training mixture length (not a limit at inference)

    @property
    def window(self) -> int:
        return int(round(self.window_ms * self.sample_rate / 1000))

    @property
    def hop(self) -> int:
        return int(round(self.hop_ms * self.sample_rate / 1000))

    @property
    def skips(self) -> list[tuple[int, int]]:
        """(from block, to block) of each skip connection, in the order the TF graph adds them."""
        if not self.skip_connections:
            return []
        return [(j * self.blocks, k * self.blocks) for k in range(self.repeats) for j in range(k)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BirdMixITConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown bird MixIT config keys: {sorted(unknown)}")
        return cls(**d)


class SkipTDCN(nn.Module):
    """The improved TDCN++ of the published graph: dense in (bias) → repeats × blocks, with dense
    skip connections into each repeat's first block → M sigmoid masks (no bias)."""

    def __init__(self, cfg: BirdMixITConfig):
        super().__init__()
        n, c = cfg.num_coeffs, cfg.bottleneck
        self.num_sources, self.num_coeffs = cfg.num_sources, n
        self.inp = nn.Conv1d(n, c, 1, bias=True)
        self.blocks = nn.ModuleList(
            TDCNBlock(c, cfg.hidden, cfg.kernel, 2 ** b, 0.9 ** (r * cfg.blocks + b), cfg.norm_eps)
            for r in range(cfg.repeats) for b in range(cfg.blocks))
        self.skips = nn.ModuleDict({f"{a}_to_{b}": nn.Conv1d(c, c, 1, bias=True) for a, b in cfg.skips})
        self.pairs = cfg.skips
        self.masks = nn.Conv1d(c, cfg.num_sources * n, 1, bias=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(B, N, F) → masks (B, M, N, F) in [0, 1], and no consistency weights."""
        h = self.inp(features)  # (B, C, F)
        inputs: list[torch.Tensor] = []  # the input of each block, skips added
        for i, block in enumerate(self.blocks):
            for a, b in self.pairs:
                if b == i:
                    h = h + self.skips[f"{a}_to_{b}"](inputs[a])
            inputs.append(h)
            h = block(h)
        masks = torch.sigmoid(self.masks(h))  # (B, M·N, F)
        return masks.view(h.shape[0], self.num_sources, self.num_coeffs, h.shape[-1]), None


class BirdMixIT(MaskingSeparator):
    """Mixture (B, T) → M sources (B, M, T) that sum to the mixture, as the published graph."""

    def __init__(self, cfg: BirdMixITConfig):
        super().__init__()
        if cfg.num_sources < 2:
            raise ValueError("a separator needs at least 2 sources")
        if cfg.consistency not in CONSISTENCY or cfg.consistency == "learned":
            raise ValueError(f"unknown consistency {cfg.consistency!r} (uniform, magsq or none)")
        if cfg.kernel < 1 or cfg.kernel % 2 == 0:
            raise ValueError("the depthwise kernel must be odd")
        self.config = cfg
        self.basis = LearnedBasis(cfg.window, cfg.hop, cfg.num_coeffs)
        self.masknet = SkipTDCN(cfg)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """mixture (B, T) or (T,) → sources (B, M, T) or (M, T): the input padded at the end to a
        multiple of the hop, separated with consistency over the padded length, then cropped."""
        single = mixture.dim() == 1
        x = mixture.unsqueeze(0) if single else mixture  # (B, T)
        padded = Fn.pad(x, (0, -x.shape[-1] % self.config.hop))  # (B, T'), T' a multiple of the hop
        sources = super().forward(padded)[..., : x.shape[-1]]  # (B, M, T)
        return sources[0] if single else sources


# ----------------------------------------------------------------------------- the engine's form


def _fused_skip_tdcn():
    """Register SkipTDCN's fused inference form: the engine's time-major block stack (the same
    arithmetic as for TDCN++), the skips as GEMMs into the residual stream."""
    from birdsep.separation import engine

    class FusedSkipTDCN(nn.Module):
        def __init__(self, net: SkipTDCN, dtype: torch.dtype):
            super().__init__()
            f32 = torch.float32
            self.num_sources, self.pairs = net.num_sources, net.pairs
            self.stack = engine.BlockStack(net.inp, net.blocks, net.masks, dtype)
            self.skips = {k: (s.weight.detach()[:, :, 0].t().to(f32, copy=True).contiguous(),
                              s.bias.detach().to(f32, copy=True)) for k, s in net.skips.items()}  # (C, C), (C,)

        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, None]:
            h = self.stack.enter(features)  # (F, B, C)
            workspace = self.stack.workspace(h)
            inputs: list[torch.Tensor] = []
            for i, block in enumerate(self.stack.blocks):
                for a, d in self.pairs:
                    if d == i:
                        w, bias = self.skips[f"{a}_to_{d}"]
                        h = h + torch.addmm(bias, inputs[a].view(-1, w.shape[0]), w).view(h.shape)
                # the block updates h in place: keep a copy where a later skip reads it
                inputs.append(h.clone() if any(a == i for a, _ in self.pairs) else h)
                h = block(h, workspace)
            return self.stack.head(h, self.num_sources), None

    @engine.fuses(SkipTDCN)
    def _fuse(net: SkipTDCN, dtype: torch.dtype) -> nn.Module | None:
        if any(block.depthwise.kernel_size[0] % 2 == 0 for block in net.blocks) or not len(net.blocks):
            return None
        return FusedSkipTDCN(net, dtype)


_fused_skip_tdcn()


# ----------------------------------------------------------------------------- the converter

#: Variables a training run leaves in the checkpoint beside the model's (Adam's slots and powers).
TRAINING_ONLY = re.compile(r"(.*/Adam(_1)?|global_step|beta[12]_power)")


def variables(cfg: BirdMixITConfig) -> dict[str, tuple[int, ...]]:
    """The model variables of the published graph for ``cfg``: TF name → shape (Keras' layer
    numbers, ``dense_1``…, written as ``dense``: they depend on the TF version that built it)."""
    n, c, h = cfg.num_coeffs, cfg.bottleneck, cfg.hidden
    out = {"conv_encoder/dense/kernel": (cfg.window, n),
           "initial_dense/dense/kernel": (n, c), "initial_dense/dense/bias": (c,),
           "initial_dense/dense_scale/scale_layer": (),
           "dense/kernel": (c, cfg.num_sources * n), "conv_decoder/dense/kernel": (n, cfg.window)}
    for a, b in cfg.skips:
        p = f"improved_tdcn/res_dense_{a}_to_{b}/"
        out |= {p + "dense/kernel": (c, c), p + "dense/bias": (c,), p + "dense_scale/scale_layer": ()}
    for i in range(cfg.repeats * cfg.blocks):
        p = f"improved_tdcn/conv_block_{i}/tdcn_block/"
        out |= {p + "dense1/dense/kernel": (c, h), p + "dense1/dense_scale/scale_layer": (),
                p + "timeconv/separable_conv/depthwise_kernel": (cfg.kernel, 1, h, 1),
                p + "timeconv/separable_conv/bias": (h,),
                p + "dense2/dense/kernel": (h, c), p + "dense2/dense_scale/scale_layer": ()}
        for k in (1, 2):
            out |= {p + f"normact{k}/prelu/prelu": (), p + f"normact{k}/instance_norm/gamma": (1,),
                    p + f"normact{k}/instance_norm/beta": (1,)}
    return out


def _plain(name: str) -> str:
    """A TF variable name without Keras' per-graph layer numbers (``dense_1`` → ``dense``)."""
    return re.sub(r"(^|/)dense_\d+/", r"\1dense/", name)


def _sizes(shapes: dict[str, tuple[int, ...]], base: BirdMixITConfig) -> BirdMixITConfig:
    """The config whose variables the checkpoint's shapes describe (``base`` for what they do not
    say: sample rate, basis timing, blocks per repeat without skips, consistency)."""
    def dim(name, axis):
        shape = shapes.get(name)
        return shape[axis] if shape is not None and len(shape) > axis else None

    n = dim("conv_encoder/dense/kernel", 1) or base.num_coeffs
    c = dim("initial_dense/dense/kernel", 1) or base.bottleneck
    h = dim("improved_tdcn/conv_block_0/tdcn_block/dense1/dense/kernel", 1) or base.hidden
    k = dim("improved_tdcn/conv_block_0/tdcn_block/timeconv/separable_conv/depthwise_kernel", 0) or base.kernel
    total = len({m.group(1) for s in shapes if (m := re.match(r"improved_tdcn/conv_block_(\d+)/", s))})
    skip = re.compile(r"improved_tdcn/res_dense_(\d+)_to_(\d+)/")
    targets = sorted({int(m.group(2)) for s in shapes if (m := skip.match(s))})
    per = targets[0] if targets else base.blocks
    repeats = total // per if per and total % per == 0 else base.repeats
    outputs = dim("dense/kernel", 1)
    m = outputs // n if outputs and n and outputs % n == 0 else base.num_sources
    return dataclasses.replace(base, num_sources=m, num_coeffs=n, bottleneck=c, hidden=h, kernel=k,
                               repeats=repeats, blocks=per, skip_connections=bool(targets))


def _mismatch(given: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> str:
    """'' when the variables match, else what does not (a few names of each kind)."""
    def few(names):
        names = sorted(names)
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    missing = set(expected) - set(given)
    unexpected = set(given) - set(expected)
    shapes = {k for k in set(given) & set(expected) if tuple(given[k]) != tuple(expected[k])}
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({few(unexpected)})")
    if shapes:
        k = sorted(shapes)[0]
        parts.append(f"{len(shapes)} of another shape ({k}: {tuple(given[k])}, expected {tuple(expected[k])}"
                     + (f"; and {len(shapes) - 1} more)" if len(shapes) > 1 else ")"))
    return "; ".join(parts)


def from_variables(tensors: dict[str, np.ndarray], cfg: BirdMixITConfig) -> BirdMixIT:
    """The birdsep model holding the TF graph's variables ``tensors`` (plain names, see
    :func:`variables`), scalars folded as the module docstring says."""
    def t(name):
        return torch.tensor(np.asarray(tensors[name], dtype=np.float32))  # a copy, 0-d kept 0-d

    def dense(name):  # TF Dense kernel (in, out) → Conv1d weight (out, in, 1)
        return t(name).t().unsqueeze(-1)

    model = BirdMixIT(cfg)
    net = model.masknet
    with torch.no_grad():
        model.basis.analysis.weight.copy_(t("conv_encoder/dense/kernel").t().unsqueeze(1))  # (N, 1, W)
        model.basis.synthesis.weight.copy_(t("conv_decoder/dense/kernel").unsqueeze(1))  # (N, 1, W)
        s = t("initial_dense/dense_scale/scale_layer")
        net.inp.weight.copy_(s * dense("initial_dense/dense/kernel"))
        net.inp.bias.copy_(s * t("initial_dense/dense/bias"))
        for a, b in cfg.skips:
            p = f"improved_tdcn/res_dense_{a}_to_{b}/"
            s = t(p + "dense_scale/scale_layer")
            net.skips[f"{a}_to_{b}"].weight.copy_(s * dense(p + "dense/kernel"))
            net.skips[f"{a}_to_{b}"].bias.copy_(s * t(p + "dense/bias"))
        for i, block in enumerate(net.blocks):
            p = f"improved_tdcn/conv_block_{i}/tdcn_block/"
            block.inp.weight.copy_(t(p + "dense1/dense_scale/scale_layer") * dense(p + "dense1/dense/kernel"))
            kernel = t(p + "timeconv/separable_conv/depthwise_kernel")  # (K, 1, H, 1)
            block.depthwise.weight.copy_(kernel[:, 0, :, 0].t().unsqueeze(1))  # (H, 1, K)
            block.depthwise.bias.copy_(t(p + "timeconv/separable_conv/bias"))
            block.out.weight.copy_(dense(p + "dense2/dense/kernel"))
            block.scale.copy_(t(p + "dense2/dense_scale/scale_layer"))
            for k, act, norm in ((1, block.act1, block.norm1), (2, block.act2, block.norm2)):
                act.weight.fill_(float(t(p + f"normact{k}/prelu/prelu")))
                norm.norm.weight.fill_(float(t(p + f"normact{k}/instance_norm/gamma")[0]))
                norm.norm.bias.fill_(float(t(p + f"normact{k}/instance_norm/beta")[0]))
        net.masks.weight.copy_(dense("dense/kernel"))
    return model.eval()


def _checkpoint_index(folder: Path) -> Path:
    indexes = sorted(folder.glob("model.ckpt-*.index"))
    if len(indexes) != 1:
        found = ", ".join(p.name for p in indexes) or "none"
        raise UsageError.of(folder, f"expected one model.ckpt-N.index (found {found})")
    return indexes[0]


def read_checkpoint(folder: Path, name: str) -> tuple[dict[str, np.ndarray], BirdMixITConfig, int | None]:
    """The model variables of the checkpoint in ``folder`` (plain names), its config and its
    step; a one-line UsageError when they are not the published graph's for ``name``."""
    from birdsep.separation import tfcheckpoint

    base = _preset_for(name)
    index = _checkpoint_index(folder)
    entries = tfcheckpoint.read_index(index)
    model_vars = {}
    for full, entry in entries.items():
        if TRAINING_ONLY.fullmatch(full):
            continue
        plain = _plain(full)
        if plain in model_vars:
            raise UsageError.of(index, f"variables do not match the bird MixIT graph: two variables are {plain}")
        model_vars[plain] = full
    shapes = {plain: entries[full].shape for plain, full in model_vars.items()}
    cfg = _sizes(shapes, base)
    problem = _mismatch(shapes, variables(cfg))
    if not problem and cfg.num_sources != base.num_sources:
        problem = f"{cfg.num_sources} outputs, {name} has {base.num_sources}"
    if problem:
        raise UsageError.of(index, f"variables do not match the bird MixIT graph: {problem}")
    wanted = set(model_vars.values()) | ({"global_step"} & set(entries))
    tensors = tfcheckpoint.read(index, wanted)
    bad = [k for k in model_vars.values() if tensors[k].dtype != np.float32 or not np.isfinite(tensors[k]).all()]
    if bad:
        raise UsageError.of(index, f"variables do not match the bird MixIT graph: {bad[0]} is not finite float32")
    step = int(tensors["global_step"]) if "global_step" in tensors else None
    if step is None and (m := re.fullmatch(r"model\.ckpt-(\d+)\.index", index.name)):
        step = int(m.group(1))
    return {plain: tensors[full] for plain, full in model_vars.items()}, cfg, step


def _preset_for(name: str) -> BirdMixITConfig:
    preset = name.replace("_", "-")
    if preset not in PRESETS:
        raise UsageError(f"{name}: not a published bird MixIT model (known: "
                         f"{', '.join(p.replace('-', '_') for p in PRESETS)})")
    return PRESETS[preset]


def convert(checkpoint_dir: Path, out_dir: Path, *, name: str) -> Path:
    """Convert the TF checkpoint in ``checkpoint_dir`` (``model.ckpt-N.index`` +
    ``.data-00000-of-00001``) of the published model ``name`` (``bird_mixit_m4`` |
    ``bird_mixit_m8``) into a birdsep model folder ``out_dir`` (new or empty):
    ``model.safetensors``, ``config.json`` and ``card.json`` (provenance, licence, step).

    The network's sizes are read from the checkpoint's shapes; then every variable must be the
    published graph's for those sizes (none missing, none unexpected beyond a training run's
    optimizer slots, every shape right) and the number of outputs ``name``'s, or this raises a
    one-line UsageError and writes nothing. Returns ``out_dir``."""
    from birdsep import files
    from birdsep.separation.model import save_model

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError.of(out_dir, "not empty (the converter writes a new model folder)")
    tensors, cfg, step = read_checkpoint(checkpoint_dir, name)
    model = from_variables(tensors, cfg)
    save_model(model, out_dir)
    base = _preset_for(name)
    card = {
        "name": name, "source": SOURCE_URL, "checkpoints": f"{CHECKPOINTS_URL}/output_sources{cfg.num_sources}/",
        "licence": LICENCE, "checkpoint_step": step, "variant": f"{cfg.num_sources} outputs",
        "paper": "Denton, Wisdom & Hershey, Improving bird classification with unsupervised sound separation, "
                 "ICASSP 2022",
        "converted_by": "birdsep.separation.architectures.bird_mixit.convert",
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if cfg != base:
        card["variant"] += " (sizes other than the published model's: " + ", ".join(
            f"{f.name} {getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(base, f.name)) + ")"
    files.write_json(out_dir / "card.json", card)
    return out_dir


# ----------------------------------------------------------------------------- registration


def _describe(cfg: BirdMixITConfig) -> str:
    return f"bird MixIT, learned {cfg.window_ms:g}/{cfg.hop_ms:g} ms"


#: ``bird-mixit-m4`` / ``bird-mixit-m8``: the published models' sizes (9.19 M variables in TF, 9.29 M parameters
#: here at M = 4: the scalar norms and PReLUs are held per channel);
#: ``bird-mixit-tiny``: the same graph small enough for tests (the reference fixture's sizes).
PRESETS = {
    "bird-mixit-m4": BirdMixITConfig(num_sources=4),
    "bird-mixit-m8": BirdMixITConfig(num_sources=8),
    "bird-mixit-tiny": BirdMixITConfig(num_coeffs=32, bottleneck=32, hidden=64, repeats=3, blocks=4),
}

register(Architecture(name="bird-mixit", config=BirdMixITConfig, module=BirdMixIT, presets=PRESETS,
                      describe=_describe))
