"""Atomic file writes: a kill at any moment leaves either the old file or the complete new one, never a torn one."""
import contextlib
import os
import tempfile
from typing import IO, Iterator

__all__ = ["atomic_path", "atomic_write", "TMP_SUFFIX"]

# Suffix of the temporary files written beside their target; a killed write leaves one behind (named
# ".<target name>.<random>.tmp").
TMP_SUFFIX = ".tmp"


def _fsync(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield the name of a temporary file beside `path` for the caller to write (e.g. with a library that takes
    a file name); on a clean exit it is fsynced and `os.replace`d onto `path`, and the folder entry is synced.
    On an exception the temporary file is removed and `path` is untouched.

    Args:
        path: the final file.
    Yields:
        str, the temporary file's path.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600 (and a writer may recreate the file); give the result the permissions a plain
        # open() would: 0666 minus the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    # The rename is durable only once the folder entry is on disk.
    _fsync(folder)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """`atomic_path` with the temporary file opened in `mode` ("wb" bytes, or "w" UTF-8 text).

    Yields:
        the open temporary file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports modes 'wb' and 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
