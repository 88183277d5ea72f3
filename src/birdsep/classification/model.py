"""Taxonomic bird classifier (paper §2.3): frontend → EfficientNet → AutoPool → heads.

Shapes: B batch, T samples, C mel channels, F frames, D embedding (1280), H×W backbone map.
The config is one frozen dataclass saved as JSON beside safetensors weights; loading is strict.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from birdsep import files
from birdsep.classification.frontend import Frontend, FrontendConfig
from birdsep.errors import UsageError, require
BACKBONES = {"b0": "efficientnet_b0", "b1": "efficientnet_b1", "b2": "efficientnet_b2"}
HEADS = ("species", "genus", "family", "order", "bird")


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything needed to rebuild a classifier; the label lists fix the heads' sizes."""

    species: tuple[str, ...]
    genus: tuple[str, ...] = ()
    family: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    backbone: str = "b0"
    embedding_dim: int = 1280
    window_seconds: float = 5.0  # model input length (the 5 s crop)
    members: int = 1  # ensemble size; members' logits are averaged
    frontend: FrontendConfig = field(default_factory=FrontendConfig)

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r} (choose from {', '.join(BACKBONES)})")
        for name in ("species", "genus", "family", "order"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.frontend, dict):
            object.__setattr__(self, "frontend", FrontendConfig(**self.frontend))

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    def head_sizes(self) -> dict[str, int]:
        return {"species": len(self.species), "genus": len(self.genus), "family": len(self.family),
                "order": len(self.order), "bird": 1}

    def to_dict(self) -> dict:
        return asdict(self)


class AutoPool(nn.Module):
    """Softmax-weighted mean over the last axis with a learnable sharpness per channel.

    ``y = Σ_t x_t · softmax(α·x)_t``: α = 0 gives the mean, α → ∞ the max, α → −∞ the min
    (McFee, Salamon & Bello 2018).
    """

    def __init__(self, channels: int, alpha: float = 0.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((channels,), float(alpha)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D, F) → (B, D)."""
        w = torch.softmax(self.alpha[None, :, None] * x, dim=-1)
        return (x * w).sum(dim=-1)


class Classifier(nn.Module):
    """One member: waveform → logits per head."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        require("timm", "classify", "a trained classifier")
        import timm  # heavy import, only when a classifier is built

        self.cfg = cfg
        self.frontend = Frontend(cfg.frontend)
        self.backbone = timm.create_model(BACKBONES[cfg.backbone], pretrained=False, in_chans=1, num_classes=0,
                                          global_pool="")
        width = self.backbone.num_features
        self.project = nn.Identity() if width == cfg.embedding_dim else nn.Linear(width, cfg.embedding_dim)
        self.pool = AutoPool(cfg.embedding_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(cfg.embedding_dim, n) for name, n in cfg.head_sizes().items()})

    def embed_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Frontend features (B, C, F) → embedding (B, D)."""
        fmap = self.backbone(feats[:, None])  # (B, width, H, W): H over mel, W over time
        seq = self.project(fmap.mean(dim=2).transpose(1, 2)).transpose(1, 2)  # (B, D, W)
        return self.pool(seq)

    def forward(self, x: torch.Tensor, band_gain: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x (B, T) waveform → {head: logits (B, n_head)}."""
        emb = self.embed_features(self.frontend(x, band_gain))
        return {name: head(emb) for name, head in self.heads.items()}


class Ensemble(nn.Module):
    """K members whose logits are averaged (paper §2.3)."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(Classifier(cfg) for _ in range(cfg.members))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, T) → {head: mean logits over members (B, n_head)}."""
        outs = [m(x) for m in self.members]
        return {k: torch.stack([o[k] for o in outs]).mean(dim=0) for k in outs[0]}


# ---------------------------------------------------------------------------- files

KIND = "classifier"


def save(model: Ensemble, folder: str | os.PathLike) -> None:
    """Write ``config.json`` ({format_version, kind, config}) + ``model.safetensors`` atomically."""
    files.save_weights(folder, KIND, model.cfg.to_dict(), model.state_dict())


def load(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Ensemble:
    """Rebuild a classifier saved by :func:`save` (strict: every weight must match)."""
    folder = Path(folder)
    if not files.has_weights(folder):
        raise UsageError.of(folder, f"not a classifier run directory (needs {files.CONFIG_NAME} and "
                                    f"{files.WEIGHTS_NAME})")
    config, state = files.load_weights(folder, KIND, device)
    try:
        cfg = ClassifierConfig(**config)
    except (ValueError, TypeError) as exc:
        raise UsageError.of(folder / files.CONFIG_NAME, f"invalid classifier config ({exc})") from None
    model = Ensemble(cfg)
    files.load_strict(model, state, folder / files.WEIGHTS_NAME)
    return model.to(device).eval()


# ---------------------------------------------------------------------------- loss

TAXONOMY_WEIGHT = 0.1  # genus, family and order losses (paper §2.3)
LABEL_SMOOTHING = 0.1


def smooth_labels(y: torch.Tensor, smoothing: float = LABEL_SMOOTHING) -> torch.Tensor:
    """Binary label smoothing: 1 → 1 − ε/2, 0 → ε/2."""
    return y * (1.0 - smoothing) + 0.5 * smoothing


def taxonomic_loss(
    logits: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    smoothing: float = LABEL_SMOOTHING,
    taxonomy_weight: float = TAXONOMY_WEIGHT,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked, label-smoothed BCE summed over heads.

    For each head h, ``logits[h]``, ``targets[h]`` (0/1) and ``masks[h]`` (0/1) are (B, n_h).
    A mask of 0 removes an entry from the loss: background species, every species of a
    recording outside the target list (it trains the taxonomy heads only), and levels the
    taxonomy could not place. Each head's loss is the mean over its unmasked entries;
    genus/family/order are weighted by ``taxonomy_weight``. Returns (total, per-head losses).
    """
    per_head: dict[str, torch.Tensor] = {}
    total = next(iter(logits.values())).new_zeros(())
    for name, z in logits.items():
        if z.shape[-1] == 0:
            continue
        y, m = smooth_labels(targets[name].to(z.dtype), smoothing), masks[name].to(z.dtype)
        bce = nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
        loss = (bce * m).sum() / m.sum().clamp(min=1.0)
        per_head[name] = loss
        total = total + (taxonomy_weight if name in ("genus", "family", "order") else 1.0) * loss
    return total, per_head
