"""The NATS wire protocol under the JetStream bus: batched publishes and direct inbox dispatch.

nats-py spends most of its time per message, not per byte: ``publish`` validates and encodes
headers with a regular expression per key and hands one command per message to its flusher,
and every received message becomes a ``Msg`` (headers parsed into a dict) queued for a
subscription task that awaits a callback. At tens of thousands of messages per second that is
most of a core. This module keeps nats-py for the connection (reconnects, buffering while
disconnected, ping/pong, the flusher) and does the per-message work itself:

- ``encode_hpub`` writes a whole batch of ``HPUB`` commands as one buffer, queued with one
  ``_send_command`` call; subjects and header values are checked once per distinct subject
  and per value, because a CR/LF in either would inject protocol commands.
- ``Wire.subscribe`` registers a plain function for a subscription's id, called synchronously
  with the raw subject, reply, payload and header block, so an ack or a pulled message costs
  one function call, no task switch. The protocol parser gets a front end that splits
  ``MSG``/``HMSG`` lines for those subscriptions with ``bytes.find`` instead of two regular
  expressions per message; anything else (and any partial message) goes to nats-py's parser,
  whose ``_process_msg`` hook dispatches to the same functions.

Both lean on nats-py internals (the parser ``_ps``, ``_process_msg``, ``_send_command``, ``_flush_pending``,
``_pending_data_size``, ``_max_payload``), checked when the bus connects: a nats-py without
them is refused with a clear error rather than misbehaving.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.protocol.parser import AWAITING_CONTROL_LINE

logger = logging.getLogger("nexus.bus")

RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
"""Called with (subject, reply, payload, raw header block or None) for each message."""

_REQUIRED = (
    "_ps",
    "_process_msg",
    "_send_command",
    "_flush_pending",
    "_pending_data_size",
    "_max_payload",
    "_flush_queue",
)


class WireError(Exception):
    """nats-py lacks an internal the bus relies on (an unsupported nats-py version)."""


class Wire:
    """Direct access to one nats-py connection's protocol (see the module docstring)."""

    def __init__(self, nc: NatsClient) -> None:
        missing = [name for name in _REQUIRED if not hasattr(nc, name)]
        if missing:
            raise WireError(
                f"this nats-py version lacks {', '.join(missing)}, which the Nexus bus needs; "
                "install the version in requirements.lock"
            )
        self.nc = nc
        self._handlers: dict[int, RawHandler] = {}
        original = nc._process_msg
        handlers = self._handlers
        stats = nc.stats

        async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            handler = handlers.get(sid)
            if handler is None:
                # nats-py passes None for a message without headers, whatever its annotation says.
                await original(sid, subject, reply, data, headers)  # type: ignore[arg-type]
                return
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            try:
                handler(subject, reply, data, headers)
            except Exception:
                # Never let a handler's bug kill the connection's read loop.
                logger.exception("handler of %s failed", subject.decode(errors="replace"))

        # The accelerator's one replacement of the client's dispatch (checked at start-up).
        nc._process_msg = process_msg  # type: ignore[method-assign]
        nc._ps.parse = _fast_parse(nc._ps, handlers, stats)  # type: ignore[assignment]

    async def subscribe(self, subject: str, handler: RawHandler) -> Any:
        """Subscribe ``handler`` to ``subject``; returns nats-py's Subscription (to unsubscribe)."""
        sub = await self.nc.subscribe(subject, cb=_unreachable)
        self._handlers[sub._id] = handler
        return sub

    def forget(self, sub: Any) -> None:
        self._handlers.pop(sub._id, None)

    def check_sendable(self, size: int) -> None:
        """Raise as ``nc.publish`` would when ``size`` more bytes cannot be queued now."""
        nc = self.nc
        if nc.is_closed:
            raise nats_errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats_errors.ConnectionDrainingError
        if not nc.is_connected and (nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size):
            raise nats_errors.OutboundBufferLimitError

    async def send(self, data: bytes, messages: int, payload_bytes: int) -> None:
        """Queue ``data`` (whole protocol commands) and kick the flusher, as ``nc.publish`` does."""
        nc = self.nc
        self.check_sendable(len(data))
        nc.stats["out_msgs"] += messages
        nc.stats["out_bytes"] += payload_bytes
        await nc._send_command(data)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    @property
    def max_payload(self) -> int:
        return int(self.nc._max_payload)


async def _unreachable(msg: Any) -> None:
    """The callback nats-py holds for a wire subscription; the wire handler gets the messages."""
    logger.warning("unexpected message on %s", msg.subject)


def _fast_parse(
    parser: Any, handlers: dict[int, RawHandler], stats: dict[str, int]
) -> Callable[[bytes], Awaitable[None]]:
    """A ``parse`` for nats-py's parser object that takes the wire's messages off its hands first."""
    original = parser.parse

    async def parse(data: bytes = b"") -> None:
        buf = parser.buf
        if buf:
            buf.extend(data)
            # One copy of the whole buffer; every field below is then one slice (one copy).
            raw = bytes(buf)
        else:
            raw = bytes(data)
        size = len(raw)
        pos = 0
        waiting = False
        while parser.state == AWAITING_CONTROL_LINE and size - pos > 5:
            if raw.startswith(b"MSG ", pos):
                args_at, with_headers = pos + 4, False
            elif raw.startswith(b"HMSG ", pos):
                args_at, with_headers = pos + 5, True
            else:
                break
            line_end = raw.find(b"\r\n", args_at)
            if line_end < 0:
                # Wait for the rest of the line here: handing a partial message to nats-py's
                # parser would leave it mid-message, and it would then take every message
                # after it the slow way.
                waiting = size - args_at < 4096
                break
            args = raw[args_at:line_end].split()
            handler = handlers.get(int(args[1]))
            if handler is None:
                break
            total = int(args[-1])
            start = line_end + 2
            if size < start + total + 2:
                waiting = True
                break
            if with_headers:
                header_size = int(args[-2])
                headers: bytes | None = raw[start : start + header_size]
                payload = raw[start + header_size : start + total]
                reply = args[2] if len(args) == 5 else b""
            else:
                headers = None
                payload = raw[start : start + total]
                reply = args[2] if len(args) == 4 else b""
            pos = start + total + 2
            stats["in_msgs"] += 1
            stats["in_bytes"] += total
            try:
                handler(args[0], reply, payload, headers)
            except Exception:
                logger.exception("handler of %s failed", args[0].decode(errors="replace"))
        if buf:
            if pos:
                del buf[:pos]
        elif pos < size:
            buf.extend(raw[pos:] if pos else raw)
        if buf and not waiting:
            await original()

    return parse
