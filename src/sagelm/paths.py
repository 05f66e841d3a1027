"""Opening a user's input file: never blocking on what is not a regular file, and naming each problem truly.

A FIFO opened for reading blocks until a writer comes, and /dev/zero never ends, so reading "whatever the path
names" can hang a run forever. `open_regular` opens without blocking, checks the open descriptor (no gap
between the check and the read) and refuses anything but a regular file. `shown` makes a path printable and
writable to UTF-8 JSON when its name holds bytes that are not UTF-8.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # O_NONBLOCK: a FIFO opens at once

_ERRNO_PROBLEMS = {
    errno.ENOENT: "no such file",
    errno.ELOOP: "a symbolic link loop (too many levels of symbolic links)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "no such file (a folder on its path is a file)",
}


class UnusableFile(Exception):
    """Why a path cannot be read as an input file; `problem` is the text without the path, `missing` tells a
    file that is not there (callers name it their own way: "no such data file")."""

    def __init__(self, problem: str, missing: bool = False):
        super().__init__(problem)
        self.problem = problem
        self.missing = missing


def shown(path: str | os.PathLike[str]) -> str:
    """`path` as printable text that UTF-8 can encode: a byte of a non-UTF-8 file name is written \\xNN."""
    s = os.fspath(path)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:  # a name from the file system: undecodable bytes arrive as surrogate escapes (PEP 383)
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate from elsewhere (a JSON "\ud800" escape)
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8(path: str | os.PathLike[str]) -> bool:
    """Whether `path`'s name is valid UTF-8 (it can go into a JSON record as it is)."""
    return shown(path) == os.fspath(path)


def problem_of(e: OSError) -> str:
    """What an OSError opening a file means, in words, without the path."""
    return _ERRNO_PROBLEMS.get(e.errno or 0) or (e.strerror or type(e).__name__).lower()


def open_regular(path: str | os.PathLike[str], kind: str = "file") -> BinaryIO:
    """`path` opened for binary reading, or UnusableFile: missing, a symlink loop, unreadable, a folder
    ("a folder, not {kind}"), a FIFO, device or socket ("not a regular file ..."). Never blocks."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as e:
        raise UnusableFile(problem_of(e), missing=e.errno in (errno.ENOENT, errno.ENOTDIR)) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UnusableFile(f"a folder, not {kind}")
        if not stat.S_ISREG(mode):
            raise UnusableFile("not a regular file (a pipe, device or socket); give the path of a file")
        os.set_blocking(fd, True)  # a regular file ignores O_NONBLOCK anyway; restore the ordinary mode
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
