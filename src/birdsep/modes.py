"""What ``birdsep classify`` scores, defined once for the command line, the Python API and the
page: the mix, the separated tracks (the best one), or both, pooled by a combination rule
(``--combine``: a name in :data:`birdsep.combination.RULES`).

Imports nothing heavy, so that ``birdsep --help`` can list the modes.
"""
from __future__ import annotations

MODES = ("mix", "separated", "mix+separated")
DEFAULT_MODE = "mix+separated"
POOLED = "mix+separated"  # the mode whose pooling --combine chooses
DEFAULT_RULE = "default"  # --combine's default, a name in birdsep.combination.RULES


def rule_names() -> tuple[str, ...]:
    """The names ``--combine`` (``combine=``) takes."""
    from birdsep.combination import RULES

    return tuple(RULES)


def check_mode(mode: str, combine: str = DEFAULT_RULE, names: tuple[str, str] = ("--mode", "--combine"),
          error: type[Exception] | None = None) -> None:
    """Refuse an unknown mode or rule, in one line naming the choices. ``names``: what the user
    typed them as (flags, keyword arguments); ``error``: the exception (default UsageError)."""
    if error is None:
        from birdsep.errors import UsageError as error
    if mode not in MODES:
        raise error(f"{names[0]} must be one of {', '.join(MODES)}, not {mode!r}")
    if combine not in (rules := rule_names()):
        raise error(f"{names[1]} must be one of {', '.join(rules)}, not {combine!r}")
