"""Importing the module that registers a user's env (``rl.env_module``), as ``python -m`` would find it.

The ``rlmaml`` console script does not have the working directory on ``sys.path`` (``python -m`` does), so a
``mytasks.py`` beside the user would not be found. The driver looks in its working directory; a Ray actor, whose
working directory is Ray's, is handed the directory the driver found the module in (``WorkerSpec.env_path``).
Any failure is one line naming the module, and for an error inside it, the file and line.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path


def import_env_module(name: str, search_dir: str = "") -> str:
    """Import ``name`` with ``search_dir`` (default: the working directory) first on ``sys.path``; return the
    directory to hand to workers (empty if the module needs none). Raises a one-line ``ValueError``."""
    if not name:
        return ""
    where = os.path.abspath(search_dir or os.getcwd())
    if where not in sys.path:
        sys.path.insert(0, where)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ValueError(f"rl.env_module {name!r} cannot be imported: no module {exc.name!r} in the working "
                             f"directory {where} or on sys.path") from None
        raise ValueError(f"rl.env_module {name!r} cannot be imported: it imports {exc.name!r}, which is not "
                         f"installed{_user_frame(exc)}") from None
    except SyntaxError as exc:
        raise ValueError(f"rl.env_module {name!r} has a syntax error at {exc.filename}:{exc.lineno}: "
                         f"{exc.msg}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised at import: one line with its place
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"rl.env_module {name!r} raised {type(exc).__name__} at import{_user_frame(exc)}"
                         f"{': ' + first if first else ''}") from None
    found = Path(getattr(module, "__file__", "") or "").resolve()
    return where if where in (str(p) for p in found.parents) else ""


def _user_frame(exc: BaseException) -> str:
    """' at FILE:LINE' of the innermost frame of the traceback outside importlib, or ''."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
