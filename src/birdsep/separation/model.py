"""Separator models: build one from its config, save it beside its config, load it back.

What a separator *is* lives in :mod:`birdsep.separation.architectures` (one file per design:
config dataclass, module, presets) and :mod:`birdsep.separation.layers` (the blocks they are
made of). A model folder holds ``model.safetensors`` and ``config.json``
``{format_version, kind: "separator", config: {architecture, ...fields}}``.

The TDCN++ names (``Separator``, ``SeparatorConfig``, ``preset``…) are re-exported here, where
code written before the registry imports them from.
"""
from __future__ import annotations

from pathlib import Path

import torch

from birdsep import files
from birdsep.errors import UsageError
from birdsep.separation import architectures
from birdsep.separation.architectures import build, preset
from birdsep.separation.architectures.tdcnpp import BASES, SeparatorConfig, Separator, widen_sources
from birdsep.separation.layers import (ChannelNorm, LearnedBasis, STFTBasis, TDCNBlock, TDCNpp, count_parameters,
                                       mixture_consistency)

__all__ = ["KIND", "PRESETS", "BASES", "SeparatorConfig", "Separator", "ChannelNorm", "LearnedBasis", "STFTBasis",
           "TDCNBlock", "TDCNpp", "build", "count_parameters", "load_separator", "mixture_consistency", "preset",
           "save_model", "widen_sources"]

KIND = "separator"

#: Every registered preset: name → config (``birdsep train-separator --preset``).
PRESETS = {name: cfg for name, (_, cfg) in architectures.presets().items()}


def save_model(model: torch.nn.Module, folder: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (naming the architecture) atomically."""
    return files.save_weights(folder, KIND, architectures.to_stored(model.config), model.state_dict())


def load_separator(folder: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a folder written by :func:`save_model` (strict: every weight must match)."""
    config, state = files.load_weights(folder, KIND)
    try:
        model = build(architectures.from_stored(config))
    except (ValueError, TypeError) as exc:
        raise UsageError.of(Path(folder) / files.CONFIG_NAME, f"invalid separator config ({exc})") from None
    files.load_strict(model, state, Path(folder) / files.WEIGHTS_NAME)
    model.source = str(folder)  # how messages about the model name it
    return model.to(device).eval()
