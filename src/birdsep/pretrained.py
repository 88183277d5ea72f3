"""Where models live: the shipped default, or a folder/run directory the user names."""
from __future__ import annotations

from pathlib import Path

from birdsep.separation.model import CONFIG_NAME, WEIGHTS_NAME, Separator, load_separator

#: The separator shipped inside the package (trained with ``birdsep train-separator``; see README).
DEFAULT_SEPARATOR = Path(__file__).parent / "models" / "separator_small_m4"
#: A bundled recording (Jura forest at dawn, BSD-3; licence beside it).
EXAMPLE_RECORDING = Path(__file__).parent / "examples" / "jura_forest_dawn.flac"


def resolve(path: str | Path | None) -> Path:
    """A model folder: ``None`` → the shipped default; a run directory or model folder as given."""
    from birdsep.errors import UsageError

    folder = DEFAULT_SEPARATOR if path is None else Path(path)
    if folder.is_file() and folder.name in (WEIGHTS_NAME, CONFIG_NAME):
        folder = folder.parent
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise UsageError(f"{folder}: no model here (expected {WEIGHTS_NAME} and {CONFIG_NAME}; "
                         "a run directory has them after its first checkpoint)")
    return folder


def load_model(path: str | Path | None = None, device: str = "cpu") -> Separator:
    """Load a separator (``None`` → the shipped default) in eval mode."""
    from birdsep.errors import UsageError

    folder = resolve(path)
    try:
        return load_separator(folder, device)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise UsageError(f"{folder}: cannot load model ({str(exc).splitlines()[0]})") from None
