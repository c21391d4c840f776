"""Atomic outputs (locseg/fsutil.py): a full disk leaves no temporary and one line saying what it needs."""

from __future__ import annotations

import errno

import pytest

from locseg.fsutil import DiskFull, atomic_path


def _enospc():
    return OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_removes_the_temporary_and_says_what_it_needs(tmp_path):
    out = tmp_path / "out.bin"
    with pytest.raises(DiskFull) as e:
        with atomic_path(out, needs=lambda written: written * 4) as tmp:
            tmp.write_bytes(b"x" * 3000)
            raise _enospc()
    assert list(tmp_path.iterdir()) == []
    msg = str(e.value)
    assert msg.startswith(f"no space left on device writing {out}: it needs about 11.7 KB (2.9 KB written")
    assert "\n" not in msg and e.value.errno == errno.ENOSPC


def test_wrapped_enospc_is_recognised(tmp_path):
    """torch.save raises a RuntimeError whose context is the OSError; h5py only quotes it in the message."""
    for wrapped in (RuntimeError("unexpected pos 704 vs 598"), RuntimeError("errno = 28, No space left on device")):
        with pytest.raises(DiskFull, match="it needs more than 0 bytes"):
            with atomic_path(tmp_path / "a.pt"):
                try:
                    raise _enospc()
                except OSError:
                    raise wrapped  # noqa: B904 - the implicit context is what torch leaves
    assert list(tmp_path.iterdir()) == []


def test_disk_full_inside_a_directory_output_names_the_directory(tmp_path):
    out = tmp_path / "masks"
    with pytest.raises(DiskFull, match=f"writing {out}: it needs more than 100 bytes"):
        with atomic_path(out) as tmp_dir:
            tmp_dir.mkdir()
            (tmp_dir / "a.png").write_bytes(b"x" * 100)
            with atomic_path(tmp_dir / "b.png") as tmp:
                raise _enospc()
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_unchanged(tmp_path):
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "a") as tmp:
            tmp.write_text("x")
            raise PermissionError(errno.EACCES, "denied")
    assert list(tmp_path.iterdir()) == []
