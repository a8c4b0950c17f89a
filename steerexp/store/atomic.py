"""Writing a file or a directory whole: into a temp name beside the target, then one rename.

A process killed mid-write leaves at worst a stray temp, never a half-written artifact or cache
entry; what is written gets the permissions the umask allows (a group-shared cache stays shared).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def apply_umask(path: Path) -> None:
    """Give a ``mkstemp``/``mkdtemp`` result (0600/0700) the mode a plain create would have had
    under the current umask, recursively for a dir, before it is renamed into place."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` and rename ``tmp`` over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        apply_umask(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextmanager
def atomic_dir(target: Path, replace: bool = True) -> Iterator[Path]:
    """``with atomic_dir(target) as tmp:`` fill ``tmp``; when the block succeeds, ``tmp`` replaces
    ``target`` (``replace=False``: an existing ``target``, e.g. a concurrent build, is kept);
    when it fails, ``tmp`` is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        apply_umask(tmp)
        if replace and target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if replace or not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
