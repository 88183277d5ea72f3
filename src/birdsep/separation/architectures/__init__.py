"""The separator architectures birdsep can build, train, store and run: a registry.

An architecture is one file holding its config dataclass, its ``nn.Module`` and its presets,
ending with a call to :func:`register`. ``config.json`` names the architecture beside the
config (``{"architecture": name, ...fields}``), so a model folder rebuilds itself; folders
written before architectures had names are read as the TDCN++ they are.

Built in: ``tdcnpp-learned`` and ``tdcnpp-stft`` (:mod:`.tdcnpp`, the shipped separators).
Other packages add theirs through the ``birdsep.architectures``
entry-point group (an entry point naming a module that calls :func:`register`), or by
calling :func:`register` themselves.

A config must be a dataclass with ``sample_rate``, ``num_sources`` and ``clip_seconds`` (the
training mixture length), ``to_dict()`` and ``from_dict(d)``. The fast inference path needs
nothing more: :mod:`birdsep.separation.engine` fuses whichever of the model's layers it has
fused forms for and runs the model's own ``forward``.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Callable

BUILT_IN = ("birdsep.separation.architectures.tdcnpp", "birdsep.separation.architectures.bird_mixit")
ENTRY_POINTS = "birdsep.architectures"


@dataclass(frozen=True)
class Architecture:
    """One registered separator design."""

    name: str
    config: type  # the config dataclass
    module: Callable  # config → nn.Module: mixture (B, T) → sources (B, M, T)
    presets: dict = field(default_factory=dict)  # preset name → config
    describe: Callable = str  # config → a few words for `birdsep models` ("stft 32/8 ms")
    #: (state, old config, new config, seed) → state for more sources (warm starts), or None
    widen: Callable | None = None
    #: config → True when this entry owns that config (several entries may share a config class)
    owns: Callable = lambda cfg: True


_REGISTRY: dict[str, Architecture] = {}
_loaded = False


def register(arch: Architecture) -> Architecture:
    """Add (or replace) an architecture; its presets must not clash with another's."""
    for other in _REGISTRY.values():
        if other.name != arch.name and set(other.presets) & set(arch.presets):
            raise ValueError(f"presets {sorted(set(other.presets) & set(arch.presets))} of {arch.name!r} "
                             f"are already {other.name!r}'s")
    _REGISTRY[arch.name] = arch
    return arch


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILT_IN:
        importlib.import_module(name)
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINTS):
            try:
                ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break birdsep
                import logging

                logging.getLogger(__name__).warning("architecture plugin %s not loaded: %s", ep.name, exc)
    except Exception:  # noqa: BLE001 - no metadata: the built-ins suffice
        pass


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> Architecture:
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def of(config) -> Architecture:
    """The architecture a config object belongs to."""
    _load()
    for arch in _REGISTRY.values():
        if isinstance(config, arch.config) and arch.owns(config):
            return arch
    raise ValueError(f"no registered architecture builds a {type(config).__name__}")


def presets() -> dict[str, tuple[Architecture, object]]:
    """Every preset: name → (architecture, config)."""
    _load()
    return {p: (arch, cfg) for arch in _REGISTRY.values() for p, cfg in arch.presets.items()}


def preset(name: str, **overrides):
    """The config of preset ``name`` with fields replaced (``None`` overrides are ignored)."""
    table = presets()
    if name not in table:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(table)})")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(table[name][1], **overrides)


def legacy_name(d: dict) -> str:
    """The architecture of a stored config written before configs named theirs: every such
    config is a TDCN++ (its ``basis`` says which)."""
    return f"tdcnpp-{d.get('basis', 'learned')}"


def to_stored(config) -> dict:
    """``{"architecture": name, ...config fields}``: what config.json and run options keep."""
    return {"architecture": of(config).name, **config.to_dict()}


def from_stored(d: dict):
    """The config object of a stored dict (see :func:`to_stored`; older dicts name no architecture)."""
    d = dict(d)
    name = d.pop("architecture", None) or legacy_name(d)
    arch = get(name)
    config = arch.config.from_dict(d)
    if not arch.owns(config):
        raise ValueError(f"config does not describe a {name!r} model")
    return config


def build(config):
    """The untrained module for ``config``."""
    return of(config).module(config)
