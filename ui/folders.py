"""Which server folders the Model page may open: only checkpoint folders under the roots the
server was started with (``OBSVIZ_MODEL_ROOTS``, a list of folders separated by ``os.pathsep``;
default the shipped model's folder and the user's home), and one answer for every folder it may
not open, so a visitor learns nothing about the server's folders."""

from __future__ import annotations

import os
from pathlib import Path

ROOTS_ENV = "OBSVIZ_MODEL_ROOTS"
#: What the page says for every folder it does not open (not there, not a checkpoint, outside
#: the roots).
REFUSED = ("No checkpoint folder by that name here: the server opens folders with a "
           "config.json under the folders it was started to allow.")


def model_roots() -> list[Path]:
    """The folders under which checkpoint folders may be opened, resolved (symlinks followed)."""
    env = os.environ.get(ROOTS_ENV)
    if env is not None:
        given = [p for p in env.split(os.pathsep) if p.strip()]
    else:
        from obsviz.calibrate import minilm_checkpoint_dir

        given = [str(p) for p in (minilm_checkpoint_dir(), Path.home()) if p is not None]
    roots = []
    for p in given:
        try:
            roots.append(Path(p).expanduser().resolve())
        except (OSError, RuntimeError, ValueError):
            continue
    return roots


def checkpoint_folder(typed: str) -> str | None:
    """The folder ``typed`` names, resolved, when it lies under one of :func:`model_roots` and
    holds a ``config.json``; ``None`` for anything else (show :data:`REFUSED`)."""
    typed = typed.strip()
    if not typed or len(typed) > 4096 or "\0" in typed:
        return None
    try:
        folder = Path(typed).expanduser().resolve()
        inside = any(folder.is_relative_to(root) for root in model_roots())
        return str(folder) if inside and (folder / "config.json").is_file() else None
    except (OSError, RuntimeError, ValueError):
        return None
