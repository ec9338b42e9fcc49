"""Telling the other processes of a machine that a SQLite log has new commits, through the file system.

The SQLite log is shared by the processes of one machine (``make run``: the relay and every
service append to one file). A subscriber in one process must learn of another's commit without
looking every few milliseconds. Each log instance owns a file in ``<log>-wake/`` named after its
process and itself, and writes one byte to it after every commit; every instance watches the
directory with Linux's inotify and wakes its subscribers when a file other than its own is
written. The byte is written once the commit is visible to readers (a write to the database's
``-wal`` file comes before its fsync and before the commit can be read, so watching that file
would wake subscribers too early). Writing costs one ``pwrite`` per transaction; watching costs
nothing while nothing happens. Where inotify is missing (another OS), ``WakeChannel.watch``
returns False and the log keeps polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path

from nexus.fs import make_private_dir

__all__ = ["WakeChannel"]

_IN_MODIFY = 0x00000002
_IN_Q_OVERFLOW = 0x00004000
_HEADER = struct.Struct("iIII")
"""``struct inotify_event``: wd, mask, cookie, len; then ``len`` bytes of NUL-padded name."""


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WakeChannel:
    """One log instance's end of the wake-up channel of a SQLite file.

    ``notify()`` (any thread, after a commit) tells the others; ``watch(callback)`` (on the
    event loop) calls ``callback()`` when another instance notified, several notifications
    between two turns of the loop making one call.
    """

    def __init__(self, database: str) -> None:
        self.directory = Path(f"{database}-wake")
        self.name = f"{os.getpid()}.{os.urandom(4).hex()}"
        self._fd = -1
        self._watch_fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        try:
            make_private_dir(self.directory)
            self._prune()
            self._fd = os.open(self.directory / self.name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError:
            self._fd = -1  # a directory we cannot write: the others fall back on polling

    def _prune(self) -> None:
        """Remove the files of processes that are gone (a process killed never removed its own)."""
        for entry in self.directory.iterdir():
            pid = entry.name.split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    entry.unlink()

    def notify(self) -> None:
        """Tell every other instance watching the file that a commit is readable now."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.pwrite(self._fd, b"\n", 0)

    def watch(self, callback: Callable[[], None]) -> bool:
        """Call ``callback()`` on the running loop when another instance notifies; False if it cannot."""
        if self._watch_fd >= 0:
            return True
        libc = _libc()
        if libc is None or not self.directory.is_dir():
            return False
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return False
        if libc.inotify_add_watch(fd, os.fsencode(self.directory), _IN_MODIFY) < 0:
            os.close(fd)
            return False
        loop = asyncio.get_running_loop()
        own = self.name.encode()
        try:
            loop.add_reader(fd, self._readable, fd, own, callback)
        except (NotImplementedError, OSError):  # a loop without add_reader
            os.close(fd)
            return False
        self._watch_fd, self._loop = fd, loop
        return True

    def _readable(self, fd: int, own: bytes, callback: Callable[[], None]) -> None:
        others = False
        while True:
            try:
                data = os.read(fd, 64 * 1024)
            except BlockingIOError:
                break
            except OSError:
                self._stop_watching()
                return
            offset = 0
            while offset + _HEADER.size <= len(data):
                _wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                name = data[offset + _HEADER.size : offset + _HEADER.size + length].rstrip(b"\0")
                offset += _HEADER.size + length
                if mask & _IN_Q_OVERFLOW or name != own:
                    others = True
        if others:
            callback()

    def _stop_watching(self) -> None:
        if self._watch_fd >= 0 and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._watch_fd)
            with contextlib.suppress(OSError):
                os.close(self._watch_fd)
        self._watch_fd = -1

    def close(self) -> None:
        """Stop watching (on the loop's thread) and remove this instance's file."""
        self._stop_watching()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            with contextlib.suppress(OSError):
                (self.directory / self.name).unlink()
        self._fd = -1
