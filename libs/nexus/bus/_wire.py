"""The bus's accelerator: batched publishes and direct inbox dispatch under a nats-py connection.

The JetStream bus works on nats-py's public API (``js.publish_async``, pull subscriptions,
``msg.ack``/``nak``/``term``). That API spends most of its time per message, not per byte:
``publish`` validates and encodes headers with a regular expression per key and hands one
command per message to its flusher, and every received message becomes a ``Msg`` queued for a
subscription task that awaits a callback. This module, when enabled, does that per-message
work itself and keeps nats-py for the connection (reconnects, buffering, ping/pong, flusher):

- ``Wire.send`` queues a whole batch of ``HPUB``/``PUB`` commands as one buffer with one
  ``_send_command`` call.
- ``Wire.subscribe`` registers a plain function for a subscription's id, called synchronously
  with the raw subject, reply, payload and header block; the protocol parser gets a front end
  that splits ``MSG``/``HMSG`` lines for those subscriptions with ``bytes.find``. Anything else
  (and any partial message) goes to nats-py's parser, whose ``_process_msg`` hook dispatches
  to the same functions. A malformed frame raises nats-py's ``ProtocolError``, so the client
  reconnects as it would for its own parser (a ValueError would end its read loop).

It leans on nats-py internals, every one of them listed in ``_CLIENT_ATTRIBUTES``,
``_PARSER_ATTRIBUTES``, ``_SIGNATURES`` and ``_SUBSCRIPTION_ATTRIBUTES`` and checked by
``check`` before it is used: a nats-py that lacks one (or changed a signature) gets the public
path and one warning. ``NEXUS_BUS_ACCELERATOR=auto`` (the default) enables it only for the
nats-py versions in ``TESTED_VERSIONS``; ``on`` for any version that passes the check; ``off``
never.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

logger = logging.getLogger("nexus.bus")

RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]
"""Called with (subject, reply, payload, raw header block or None) for each message."""

TESTED_VERSIONS = ((2, 16), (2, 17))
"""nats-py versions the accelerator was tested with: at least the first, below the second."""

ACCELERATOR_MODES = ("auto", "on", "off")

# Every private name the accelerator touches, by where it lives.
_CLIENT_ATTRIBUTES = (
    "_ps",
    "_process_msg",
    "_send_command",
    "_flush_pending",
    "_flush_queue",
    "_pending_data_size",
    "_max_pending_size",
    "_max_payload",
    "stats",
)
_PARSER_ATTRIBUTES = ("buf", "state", "parse")
_SUBSCRIPTION_ATTRIBUTES = ("_id",)
_STATS_KEYS = ("in_msgs", "in_bytes", "out_msgs", "out_bytes")
_SIGNATURES: dict[str, tuple[str, ...]] = {
    # name on the client -> the parameters it must take, in order
    "_process_msg": ("sid", "subject", "reply", "data", "headers"),
    "_send_command": ("cmd", "priority"),
    "_flush_pending": ("force_flush",),
}


class WireError(Exception):
    """nats-py lacks an internal the accelerator relies on, or has changed it."""


def nats_py_version() -> tuple[int, ...]:
    try:
        text = importlib.metadata.version("nats-py")
    except importlib.metadata.PackageNotFoundError:
        return ()
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def tested_version(version: tuple[int, ...] | None = None) -> bool:
    """Whether this nats-py (or ``version``) is one the accelerator was tested with."""
    version = nats_py_version() if version is None else version
    low, high = TESTED_VERSIONS
    return bool(version) and low <= version[:2] < high


def check(nc: Any) -> list[str]:
    """Every problem that stops the accelerator on ``nc`` (empty: it can run)."""
    problems = [f"client has no {name}" for name in _CLIENT_ATTRIBUTES if not hasattr(nc, name)]
    parser = getattr(nc, "_ps", None)
    if parser is not None:
        problems += [f"parser has no {name}" for name in _PARSER_ATTRIBUTES if not hasattr(parser, name)]
        if hasattr(parser, "buf") and not isinstance(parser.buf, bytearray):
            problems.append("parser buf is not a bytearray")
        if hasattr(parser, "parse") and not inspect.iscoroutinefunction(parser.parse):
            problems.append("parser parse is not a coroutine function")
    try:
        from nats.protocol import parser as parser_module

        if not hasattr(parser_module, "AWAITING_CONTROL_LINE"):
            problems.append("nats.protocol.parser has no AWAITING_CONTROL_LINE")
    except ImportError:
        problems.append("no nats.protocol.parser module")
    stats = getattr(nc, "stats", None)
    if isinstance(stats, dict):
        problems += [f"client stats has no {key}" for key in _STATS_KEYS if key not in stats]
    elif stats is not None:
        problems.append("client stats is not a dict")
    for name, wanted in _SIGNATURES.items():
        method = getattr(nc, name, None)
        if method is None:
            continue
        if not inspect.iscoroutinefunction(method):
            problems.append(f"client {name} is not a coroutine function")
            continue
        try:
            params = tuple(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            problems.append(f"client {name} has no readable signature")
            continue
        if params[: len(wanted)] != wanted:
            problems.append(f"client {name} takes {params}, not {wanted}")
    try:
        sub_params = inspect.signature(Subscription.__init__).parameters
    except (TypeError, ValueError):
        sub_params = {}  # type: ignore[assignment]  # an empty mapping: reported just below
    if "id" not in sub_params:
        problems.append("Subscription is no longer created with an id")
    return problems


def choose(mode: str, nc: Any) -> bool:
    """Whether to run the accelerator on ``nc`` for ``NEXUS_BUS_ACCELERATOR=mode``; warns once on a fallback."""
    if mode not in ACCELERATOR_MODES:
        raise ValueError(f"bus accelerator must be one of {', '.join(ACCELERATOR_MODES)}, got {mode!r}")
    if mode == "off":
        return False
    version = nats_py_version()
    if mode == "auto" and not tested_version(version):
        _warn_once(
            f"the bus accelerator was tested with nats-py >= {'.'.join(map(str, TESTED_VERSIONS[0]))}, "
            f"< {'.'.join(map(str, TESTED_VERSIONS[1]))}, not {'.'.join(map(str, version)) or 'this version'}: "
            "using nats-py's public API (NEXUS_BUS_ACCELERATOR=on forces it when the check passes)"
        )
        return False
    problems = check(nc)
    if problems:
        _warn_once(f"the bus accelerator cannot run on this nats-py ({'; '.join(problems)}): using its public API")
        return False
    return True


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning("%s", message)


class Wire:
    """Direct access to one nats-py connection's protocol (see the module docstring)."""

    def __init__(self, nc: NatsClient) -> None:
        problems = check(nc)
        if problems:
            raise WireError(f"the bus accelerator cannot run on this nats-py: {'; '.join(problems)}")
        self.nc = nc
        self.counts = [0, 0]
        """Messages for wire subscriptions split by the fast parser, and by nats-py's parser."""
        self._handlers: dict[int, RawHandler] = {}
        counts = self.counts
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
            counts[1] += 1
            try:
                handler(subject, reply, data, headers)
            except Exception:
                # Never let a handler's bug kill the connection's read loop.
                logger.exception("handler of %s failed", subject.decode(errors="replace"))

        # The accelerator's one replacement of the client's dispatch (checked at start-up).
        nc._process_msg = process_msg  # type: ignore[method-assign]
        nc._ps.parse = _fast_parse(nc._ps, handlers, stats, counts)  # type: ignore[assignment]

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
    parser: Any, handlers: dict[int, RawHandler], stats: dict[str, int], counts: list[int] | None = None
) -> Callable[[bytes], Awaitable[None]]:
    """A ``parse`` for nats-py's parser object that takes the wire's messages off its hands first."""
    from nats.protocol.parser import AWAITING_CONTROL_LINE

    original = parser.parse
    counts = [0, 0] if counts is None else counts
    # Bytes the buffer must hold before parsing it again is worth it (0: any): while the rest
    # of a message is on its way, each read only appends to the buffer.
    need = [0]

    async def parse(data: bytes = b"") -> None:
        try:
            await _parse(data)
        except (ValueError, IndexError) as exc:
            # A malformed frame: as nats-py's own parser does, a ProtocolError, on which the
            # client reconnects (anything else would end its read loop for good).
            parser.buf.clear()
            need[0] = 0
            raise nats_errors.ProtocolError(f"nats: malformed message from the server: {exc}") from exc

    async def _parse(data: bytes) -> None:
        buf = parser.buf
        if buf:
            buf.extend(data)
            if len(buf) < need[0]:
                return
            pos, waiting = _messages(buf)
            if pos:
                del buf[:pos]
        else:
            pos, waiting = _messages(data)
            if pos < len(data):
                buf.extend(memoryview(data)[pos:])
        if buf and not waiting:
            need[0] = 0
            await original()

    def _messages(raw: bytes | bytearray) -> tuple[int, bool]:
        """Hand the wire's complete messages at the start of ``raw`` to their handlers, in place.

        ``raw`` is the new bytes or the parser's buffer, read where it is: a message large
        enough to arrive over many reads used to copy the whole buffer on each of them. Each
        field is copied once, out of a view that is released before the buffer is trimmed.
        Returns how many bytes were consumed and whether the next is a message still arriving.
        """
        size = len(raw)
        pos = 0
        waiting = False
        need[0] = 0
        with memoryview(raw) as view:
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
                    need[0] = size - pos + 1 if waiting else 0
                    break
                args = bytes(view[args_at:line_end]).split()
                handler = handlers.get(int(args[1]))
                if handler is None:
                    break
                total = int(args[-1])
                start = line_end + 2
                if size < start + total + 2:
                    waiting = True
                    need[0] = start + total + 2 - pos
                    break
                if with_headers:
                    header_size = int(args[-2])
                    headers: bytes | None = bytes(view[start : start + header_size])
                    payload = bytes(view[start + header_size : start + total])
                    reply = args[2] if len(args) == 5 else b""
                else:
                    headers = None
                    payload = bytes(view[start : start + total])
                    reply = args[2] if len(args) == 4 else b""
                pos = start + total + 2
                stats["in_msgs"] += 1
                stats["in_bytes"] += total
                counts[0] += 1
                try:
                    handler(args[0], reply, payload, headers)
                except Exception:
                    logger.exception("handler of %s failed", args[0].decode(errors="replace"))
        return pos, waiting

    return parse
