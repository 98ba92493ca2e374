"""Atomic file and directory writes: nothing half-written is ever left under a final name; and
the per-user cache directory that tinyllm's builds (kernels, compiled graphs) live in.

Files are written to a temporary sibling and `os.replace`d into place; directories are built
under a temporary sibling name and renamed into place, so a reader sees the old thing or the new
thing, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def user_cache_dir(*parts: str) -> Path:
    """($XDG_CACHE_HOME or ~/.cache)/tinyllm/<parts>: where builds made on first use are kept."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "tinyllm", *parts)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, then move tmp_path onto `path`; on any failure remove tmp_path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def atomic_directory(path: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it becomes `path`.

    With `replace`, an existing `path` is swapped out only after the new one is complete.
    On failure the temporary directory is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the permissions mkdir would
        if path.exists() and replace:
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)  # fails if path exists: the caller decides about overwriting
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
