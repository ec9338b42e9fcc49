"""Event ids and other random identifiers, drawn from a pool of kernel randomness.

``os.urandom`` releases the GIL around its system call, so on a busy process the event loop
then waits for the event log's writer and reader threads to hand the GIL back: under the
workflow engine's load that wait, not the system call, made one ``os.urandom(10)`` per event
id cost about 40 µs. Here the same randomness (the kernel's CSPRNG) is read 4 KiB at a time and
sliced, one system call per ~400 ids. Event ids are UUIDv7 (RFC 9562: 48-bit Unix
milliseconds, version 7, 74 random bits, variant 10)::

    new_event_id()      # '0192f1c4-7b2e-7c3a-9f10-4d5e6a7b8c9d'
    ids = RandomPool()
    ids.hex(8)          # 16 hex digits (a W3C span id)

A pool is not shared across threads: ``new_event_id`` keeps one per thread, and a forked child
starts with fresh pools so it never hands out its parent's bytes.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["RandomPool", "new_event_id"]

_CHUNK = 4096
_MASK48 = (1 << 48) - 1
_MASK62 = (1 << 62) - 1


class RandomPool:
    """Random bytes from ``os.urandom``, fetched in chunks and handed out in slices."""

    __slots__ = ("_buffer", "_offset")

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def take(self, n: int) -> bytes:
        """``n`` fresh random bytes (never handed out twice)."""
        if n > _CHUNK:
            return os.urandom(n)
        offset = self._offset
        if offset + n > len(self._buffer):
            self._buffer = os.urandom(_CHUNK)
            offset = 0
        self._offset = offset + n
        return self._buffer[offset : offset + n]

    def hex(self, n: int) -> str:
        """``n`` random bytes as ``2 n`` lowercase hex digits."""
        return self.take(n).hex()

    def event_id(self) -> str:
        """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, 74 random bits, variant 10."""
        ms = time.time_ns() // 1_000_000
        rand = int.from_bytes(self.take(10), "big")
        value = (ms & _MASK48) << 80 | 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64 | 0b10 << 62 | (rand & _MASK62)
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_local = threading.local()


def _reset_after_fork() -> None:
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_reset_after_fork)


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, 74 random bits from this thread's pool."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = RandomPool()
    return pool.event_id()
