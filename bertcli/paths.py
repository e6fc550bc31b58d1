"""Outputs against inputs: no command writes onto, into or around a file or directory it reads.

:func:`check_outputs` runs before a command reads or writes anything. Paths are compared after
resolving symlinks and ``..``, so ``--out link-to-model`` is the same path as ``--model model``.
``-`` (stdin / stdout) and unset options are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from bertcli.errors import ConfigError

PathLike = str | os.PathLike
PathSpec = PathLike | Iterable[PathLike] | None


def _paths(value: PathSpec) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        value = [value]
    return [str(v) for v in value if v is not None and str(v) not in ("", "-")]


def _resolve(path: str) -> Path:
    try:
        return Path(path).expanduser().resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop: compare the path as written
        return Path(os.path.abspath(path))


def make_run_dir(path: Path, error: type = ConfigError, flag: str = "--out") -> None:
    """Create a run directory (parents too); a failure or a file in the way is ``error`` naming ``flag``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{path}: cannot create the run directory ({exc.strerror}); choose another {flag}") from None
    if not path.is_dir():
        raise error(f"{path}: is not a directory; choose another {flag}")


def check_outputs(outputs: Mapping[str, PathSpec], inputs: Mapping[str, PathSpec]) -> None:
    """Refuse an output that is an input, lies inside one, or contains one (``ConfigError``).

    ``outputs`` and ``inputs`` map the option name (``--out``, ``--model``, ``corpus``) to a path,
    a list of paths or ``None``. The message names both paths and the option to change.
    """
    for out_flag, out_value in outputs.items():
        for out in _paths(out_value):
            target = _resolve(out)
            for in_flag, in_value in inputs.items():
                for src in _paths(in_value):
                    source = _resolve(src)
                    if target == source:
                        how = "is the same path as"
                    elif target.is_relative_to(source):
                        how = "lies inside"
                    elif source.is_relative_to(target):
                        how = "contains"
                    else:
                        continue
                    raise ConfigError(
                        f"{out_flag} {out} {how} {in_flag} {src}: the command would write over its own "
                        f"input; choose another {out_flag}"
                    )
