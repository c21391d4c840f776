"""Atomic file output: a later stage must never see a half-written file, nor a full disk a leftover one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from locseg.logs import StageStop


class DiskFull(StageStop, OSError):
    """ENOSPC while writing an output: which output, roughly how much it needs, and that nothing is left."""

    def __init__(self, path: Path, written: int, needs: int | None):
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        need = f"about {_human(needs)}" if needs else f"more than {_human(written)}"
        super().__init__(errno.ENOSPC, f"no space left on device writing {path}: it needs {need} "
                                       f"({_human(written)} written when the disk filled, {_human(free)} free "
                                       f"in {path.parent} now); the partial output was removed")

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(error: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception chain (torch and h5py wrap the OSError or only quote it)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needs: Callable[[int], int | None] | None = None):
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    Works for files and directories. On failure the temporary is removed and `path` is untouched; when the
    disk filled up, `DiskFull` says so, with `needs(bytes written)` as the estimated full size if given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            _remove(path)
        os.replace(tmp, path)
    except BaseException as e:
        if not is_disk_full(e):
            raise
        written = _size(tmp)
        _remove(tmp)
        raise DiskFull(path, written, needs(written) if needs else None) from None
    finally:
        _remove(tmp)


def _size(p: Path) -> int:
    """Bytes on disk (HDF5 leaves holes: its logical size can exceed what the disk gave it)."""
    files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p] if p.exists() else []
    return sum(min(st.st_size, st.st_blocks * 512) for st in (f.stat() for f in files))


def _human(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically, with sorted keys so equal content gives equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: str | os.PathLike):
    """Read JSON, naming the file in the error when it does not parse."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
