"""Opening a path that must stay beneath a directory, checked by the kernel at open time.

Resolving a path and checking it lies inside a directory, then opening it, has a
window: a component swapped for a symlink in between (an agent's command can do
that while its own tool reads) sends the open elsewhere. Here the check and the
open are one system call: Linux's ``openat2`` with ``RESOLVE_BENEATH`` (5.6+)
refuses any resolution, symlinks and ``..`` included, that leaves the directory,
with ``EXDEV``; relative symlinks that stay inside still work (an absolute one
names the machine's root, and is refused). Where ``openat2`` is missing
the path is walked one component at a time with ``O_NOFOLLOW``, each opened
relative to the one before, so no symlink is followed at all.

Standard library only (``ctypes`` for the system call).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import posixpath

__all__ = ["EscapeError", "makedirs_beneath", "open_beneath"]

SYS_OPENAT2 = 437  # the same number on every Linux architecture (the generic table)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08


class EscapeError(PermissionError):
    """The path leaves the directory (through ``..``, an absolute path or a symlink)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@functools.cache
def _has_openat2() -> bool:
    libc = _libc()
    if libc is None:
        return False
    how = _OpenHow(os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, RESOLVE_BENEATH)
    fd = libc.syscall(SYS_OPENAT2, -100, b".", ctypes.byref(how), ctypes.sizeof(how))
    if fd >= 0:
        os.close(fd)
        return True
    return False


def _relative(path: str) -> str:
    if not path or "\x00" in path:
        raise EscapeError(errno.EINVAL, "path must be a non-empty string without NUL")
    if path.startswith("/"):
        raise EscapeError(errno.EXDEV, f"{path!r} is absolute")
    return path


def open_beneath(root_fd: int, path: str, flags: int, mode: int = 0o644) -> int:
    """A descriptor for ``path`` opened relative to directory ``root_fd``, refused with
    EscapeError when resolving it would leave that directory; other failures are
    the usual OSErrors (FileNotFoundError, IsADirectoryError...)."""
    path = _relative(path)
    flags |= os.O_CLOEXEC
    if _has_openat2():
        libc = _libc()
        assert libc is not None
        how = _OpenHow(
            flags, mode if flags & os.O_CREAT else 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
        )
        fd: int = libc.syscall(
            SYS_OPENAT2, root_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
        )
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code == errno.EXDEV:
            raise EscapeError(code, f"{path!r} leaves the directory")
        raise OSError(code, os.strerror(code), path)
    return _walk(root_fd, path, flags, mode)


def _walk(root_fd: int, path: str, flags: int, mode: int) -> int:
    """No ``openat2``: every component opened with O_NOFOLLOW relative to its parent."""
    parts = [p for p in posixpath.normpath(path).split("/") if p not in ("", ".")]
    if not parts or parts[0] == "..":
        if not parts:
            return os.open(".", flags, mode, dir_fd=root_fd)
        raise EscapeError(errno.EXDEV, f"{path!r} leaves the directory")
    current = root_fd
    try:
        for part in parts[:-1]:
            following = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current
            )
            if current != root_fd:
                os.close(current)
            current = following
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=current)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise EscapeError(errno.ELOOP, f"{path!r} is a symlink") from None
            raise
    except NotADirectoryError:
        raise EscapeError(errno.ENOTDIR, f"{path!r} goes through a symlink or a file") from None
    finally:
        if current != root_fd:
            os.close(current)


def makedirs_beneath(root_fd: int, path: str, mode: int = 0o755) -> None:
    """``mkdir -p path`` beneath ``root_fd``: each level created relative to its parent,
    opened beneath the directory before the next is made (EscapeError otherwise)."""
    path = _relative(path)
    parts = [p for p in posixpath.normpath(path).split("/") if p not in ("", ".")]
    if parts and parts[0] == "..":
        raise EscapeError(errno.EXDEV, f"{path!r} leaves the directory")
    done = ""
    for part in parts:
        done = f"{done}/{part}" if done else part
        parent = posixpath.dirname(done) or "."
        fd = open_beneath(root_fd, parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.mkdir(part, mode, dir_fd=fd)
        except FileExistsError:
            pass
        finally:
            os.close(fd)
    if parts:
        os.close(open_beneath(root_fd, path, os.O_RDONLY | os.O_DIRECTORY))
