"""Where models live: shipped with birdsep, installed in the user model folder (``birdsep models
download`` / ``import``, :mod:`birdsep.modelstore`), or a folder/run directory the user names;
and the bundled example recording (also the probe ``--precision auto`` measures on)."""
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


def user_models() -> Path:
    """The user model folder, where ``birdsep models download``/``import`` install models
    (``$BIRDSEP_MODELS_DIR``, else ``$XDG_DATA_HOME/birdsep/models`` or ``~/.local/share/birdsep/models``)."""
    from birdsep.modelstore import models_dir

    return models_dir()


def shipped(name: str) -> Path | None:
    """The folder of the model called ``name`` (its folder name, with or without the
    ``separator_`` prefix): shipped with birdsep, else installed in :func:`user_models`; or None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    for root in (MODELS, user_models()):
        for candidate in (root / name, root / f"separator_{name}"):
            if has_weights(candidate):
                return candidate
    return None


def _not_found(path: str) -> UsageError:
    """The one line for a ``--model`` that names nothing: a published model not installed yet
    says how to get it; another name lists the names there are."""
    from birdsep.modelstore import PUBLISHED

    if path in PUBLISHED:
        return UsageError(f"{path}: not installed (`birdsep models download {path}` fetches and installs it; "
                          "`birdsep models import DIR` converts checkpoint files you have)")
    reason = (f"no model here (expected {WEIGHTS_NAME} and {CONFIG_NAME}; a run directory has them after its "
              "first checkpoint")
    if "/" in path or "\\" in path or path in (".", ".."):
        return UsageError(f"{path}: {reason}; `birdsep models` lists the models by name)")
    names = [m["name"] for m in shipped_separators()] + [f"{n} (to download)" for n in PUBLISHED if shipped(n) is None]
    return UsageError(f"{path}: {reason}; known names: {', '.join(names)}; `birdsep models` lists them)")


def resolve(path: str | Path | None) -> Path:
    """A model folder: ``None`` → the shipped default; a model's name (shipped, then installed in
    the user model folder; ``birdsep models`` lists them); or a run directory / model folder as given."""
    folder = DEFAULT_SEPARATOR if path is None else Path(path)
    if path is not None and not folder.exists():
        folder = shipped(str(path)) or folder
        if not folder.exists():
            raise _not_found(str(path))
    if folder.is_file() and folder.name in (WEIGHTS_NAME, CONFIG_NAME):
        folder = folder.parent
    if not has_weights(folder):
        raise UsageError(f"{folder}: no model here (expected {WEIGHTS_NAME} and {CONFIG_NAME}; "
                         "a run directory has them after its first checkpoint; `birdsep models` lists the models by name)")
    return folder


def portable(folder: str | Path) -> str:
    """How another machine with birdsep names ``folder`` for :func:`resolve`: a shipped or installed
    model by its name (installs live at different paths), any other folder by its absolute path."""
    folder = Path(folder).resolve()
    if folder.parent in (MODELS.resolve(), user_models().resolve()):
        found = shipped(folder.name)
        if found is not None and found.resolve() == folder:
            return folder.name
    return str(folder)


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


def _card(folder: Path) -> dict:
    if not (folder / CARD_NAME).is_file():
        return {}
    try:
        card = json.loads((folder / CARD_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def shipped_separators() -> list[dict]:
    """The separators there are by name: shipped with birdsep (every folder under ``models/``
    holding a separator's weights and config), then installed in :func:`user_models` (a name
    shipped already is not repeated), the default first: ``{"name", "path", "sources",
    "sample_rate", "default", "where": "shipped" | "installed", "config", "card"}``."""
    from birdsep.files import read_config

    found, seen = [], set()
    for where, root in (("shipped", MODELS), ("installed", user_models())):
        try:
            folders = sorted(root.iterdir()) if root.is_dir() else []
        except OSError:  # an unreadable user model folder: no installed models
            folders = []
        for folder in folders:
            if folder.name.startswith(".") or folder.name in seen:
                continue
            try:
                cfg = read_config(folder, "separator")
            except UsageError:  # not a separator (or not a model at all)
                continue
            seen.add(folder.name)
            found.append({"name": folder.name, "path": str(folder), "sources": int(cfg.get("num_sources", 0)),
                          "sample_rate": int(cfg.get("sample_rate", 0)), "default": folder == DEFAULT_SEPARATOR,
                          "where": where, "config": cfg, "card": _card(folder)})
    return sorted(found, key=lambda d: (not d["default"], d["where"] != "shipped", d["sources"], d["name"]))


def models_table() -> str:
    """``birdsep models``: the separators shipped, installed and published (to download), their
    design, held-out MoMi and training."""
    from birdsep.modelstore import PUBLISHED

    def num(value, fmt: str) -> str:
        return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""

    rows = [("name", "status", "M", "kHz", "basis", "MoMi (held-out species)", "track purity", "training")]
    models = shipped_separators()
    for m in models:
        cfg, card = m["config"], m["card"]
        momi, ci = num(card.get("momi_heldout_db"), "{:.2f} dB"), card.get("momi_heldout_ci")
        if momi and isinstance(ci, list) and len(ci) == 2 and all(num(c, "{}") for c in ci):
            momi += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        train = card.get("training") if isinstance(card.get("training"), dict) else {}
        rows.append((
            m["name"] + (" (default)" if m["default"] else ""), m["where"], str(m["sources"]),
            f"{m['sample_rate'] / 1000:g}",
            f"{cfg.get('basis', 'learned')} {num(cfg.get('window_ms', 0), '{:g}')}/{num(cfg.get('hop_ms', 0), '{:g}')} ms",
            momi or "–", num(card.get("track_purity"), "{:.2f}") or "–",
            ", ".join(x for x in (
                num(train.get("steps") or None, "{} steps"), num(train.get("cpu_hours") or None, "{:.1f} CPU-h"),
                num(train.get("audio_hours") or None, "{:.2f} h of audio")) if x) or "–",
        ))
    names = {m["name"] for m in models}
    for p in PUBLISHED.values():
        if p.name not in names:
            rows.append((p.name, "to download", str(p.sources), f"{p.sample_rate / 1000:g}",
                         f"learned {p.window_ms:g}/{p.hop_ms:g} ms", "–", "–", f"{p.step} steps (Google, TPUs)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    evals = sorted({m["card"]["eval"] for m in models if isinstance(m["card"].get("eval"), str)})
    return "\n".join(lines + [""] + [f"MoMi: {e}" for e in evals] + [
        "--model takes a name above, a model folder or a run directory.",
        f"`birdsep models download NAME` installs a model marked 'to download' into {user_models()} "
        "($BIRDSEP_MODELS_DIR); `birdsep models import DIR` converts its checkpoint files fetched another way."])


def weights_sha256(folder: str | Path) -> str | None:
    """sha256 of a model folder's weights (what tells two separators apart; recorded in
    separation.json); None if the folder has none. Computed once per weights file and version."""
    from birdsep.files import sha256

    return sha256(resolve(folder) / WEIGHTS_NAME)


