"""Where models live: the shipped default, or a folder/run directory the user names; and the
bundled example recording (also the probe ``--precision auto`` measures on)."""
from __future__ import annotations

import json
from pathlib import Path

from birdsep.errors import UsageError
from birdsep.files import CONFIG_NAME, WEIGHTS_NAME, has_weights

#: Where shipped models live: one folder each (weights + config).
MODELS = Path(__file__).parent / "models"
#: The default separator (32 kHz STFT masks, M = 4; trained with ``birdsep train-separator``,
#: see the README's "The shipped models"); ``separator_stft_m8`` and the earlier
#: ``separator_small_m4`` (22.05 kHz) ship beside it.
DEFAULT_SEPARATOR = MODELS / "separator_stft_m4"
#: A bundled recording (Jura forest at dawn, BSD-3; licence beside it).
EXAMPLE_RECORDING = Path(__file__).parent / "examples" / "jura_forest_dawn.flac"
PROBE_START = 2.0  # s into the example (10 s long; several birds singing)


CARD_NAME = "card.json"  # a shipped model's measured quality and training facts


def shipped(name: str) -> Path | None:
    """The folder of the shipped model called ``name`` (its folder name, with or without the
    ``separator_`` prefix), or None."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    for candidate in (MODELS / name, MODELS / f"separator_{name}"):
        if has_weights(candidate):
            return candidate
    return None


def resolve(path: str | Path | None) -> Path:
    """A model folder: ``None`` → the shipped default; a shipped model's name (``birdsep
    models`` lists them); or a run directory / model folder as given."""
    folder = DEFAULT_SEPARATOR if path is None else Path(path)
    if path is not None and not folder.exists():
        folder = shipped(str(path)) or folder
    if folder.is_file() and folder.name in (WEIGHTS_NAME, CONFIG_NAME):
        folder = folder.parent
    if not has_weights(folder):
        raise UsageError(f"{folder}: no model here (expected {WEIGHTS_NAME} and {CONFIG_NAME}; "
                         "a run directory has them after its first checkpoint; `birdsep models` lists the shipped ones)")
    return folder


def portable(folder: str | Path) -> str:
    """How another machine with birdsep names ``folder`` for :func:`resolve`: a shipped model by
    its name (installs live at different paths), any other folder by its absolute path."""
    folder = Path(folder).resolve()
    return folder.name if folder.parent == MODELS.resolve() else str(folder)


def load_model(path: str | Path | None = None, device: str = "cpu"):
    """Load a separator (``None`` → the shipped default) in eval mode."""
    from birdsep.separation.model import load_separator

    folder = resolve(path)
    try:
        return load_separator(folder, device)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise UsageError(f"{folder}: cannot load model ({str(exc).splitlines()[0]})") from None


def probe_audio(sample_rate: int, seconds: float = 2.0):
    """(T,) float32: ``seconds`` of real birdsong at ``sample_rate`` from the bundled example
    (seeded noise if it is missing), for measuring a model's speed and accuracy."""
    import numpy as np

    from birdsep import audio

    try:
        x, _ = audio.load(EXAMPLE_RECORDING, sample_rate, start=PROBE_START, duration=seconds)
    except Exception:  # noqa: BLE001 - a missing or unreadable example: a fixed signal instead
        x = np.random.default_rng(0).standard_normal(int(seconds * sample_rate)).astype(np.float32)
    return x


def shipped_separators() -> list[dict]:
    """The separators shipped with birdsep (every folder under ``models/`` holding a separator's
    weights and config), the default first: ``{"name", "path", "sources", "sample_rate", "default"}``."""
    from birdsep.files import read_config

    found = []
    for folder in sorted(MODELS.iterdir()) if MODELS.is_dir() else []:
        try:
            cfg = read_config(folder, "separator")
        except UsageError:  # not a separator (or not a model at all)
            continue
        card = {}
        if (folder / CARD_NAME).is_file():
            try:
                card = json.loads((folder / CARD_NAME).read_text())
            except (OSError, ValueError):
                card = {}
        found.append({"name": folder.name, "path": str(folder), "sources": int(cfg.get("num_sources", 0)),
                      "sample_rate": int(cfg.get("sample_rate", 0)), "default": folder == DEFAULT_SEPARATOR,
                      "config": cfg, "card": card})
    return sorted(found, key=lambda d: (not d["default"], d["sources"], d["name"]))


def models_table() -> str:
    """``birdsep models``: the shipped separators, their design, held-out MoMi and training."""
    rows = [("name", "M", "kHz", "basis", "MoMi (held-out species)", "track purity", "training")]
    for m in shipped_separators():
        cfg, card = m["config"], m["card"]
        momi = card.get("momi_heldout_db")
        ci = card.get("momi_heldout_ci")
        train = card.get("training", {})
        rows.append((
            m["name"] + (" (default)" if m["default"] else ""), str(m["sources"]), f"{m['sample_rate'] / 1000:g}",
            f"{cfg.get('basis', 'learned')} {cfg.get('window_ms', 0):g}/{cfg.get('hop_ms', 0):g} ms",
            "–" if momi is None else f"{momi:.2f} dB" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""),
            "–" if card.get("track_purity") is None else f"{card['track_purity']:.2f}",
            ", ".join(x for x in (
                f"{train['steps']} steps" if train.get("steps") else "",
                f"{train['cpu_hours']:.1f} CPU-h" if train.get("cpu_hours") else "",
                f"{train['audio_hours']:.2f} h of audio" if train.get("audio_hours") else "") if x) or "–",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    evals = sorted({m["card"]["eval"] for m in shipped_separators() if m["card"].get("eval")})
    return "\n".join(lines + [""] + [f"MoMi: {e}" for e in evals] + ["--model takes a name above, a model folder or a run directory."])


def weights_sha256(folder: str | Path) -> str | None:
    """sha256 of a model folder's weights (what tells two separators apart; recorded in
    separation.json); None if the folder has none. Computed once per weights file and version."""
    from birdsep.files import sha256

    return sha256(resolve(folder) / WEIGHTS_NAME)


