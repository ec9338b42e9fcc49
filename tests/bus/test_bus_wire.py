"""The accelerator (``_wire``): its parser front end fed bytes split anywhere, its start-up check and
fallback, that it is on the read path when enabled, and that a malformed frame reconnects; header helpers."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import nats
import pytest
from nats.protocol.parser import Parser

from nexus.bus import BusArgumentError, ConsumerSpec, Delivery, OutboundMessage, _wire
from nexus.bus._protocol import LazyHeaders, header_block, parse_headers
from nexus.bus._subjects import check_subject
from nexus.bus._wire import Wire, WireError, _fast_parse
from nexus.bus.jetstream import JetStreamBus, _Pipeline
from nexus.proto import STREAM_EVT


class FakeClient:
    """What nats-py's parser calls back on a client, recorded."""

    def __init__(self) -> None:
        self.slow: list[tuple[int, bytes, bytes, bytes, bytes | None]] = []
        self.pings = 0

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self.slow.append((sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.pings += 1


def stream() -> tuple[bytes, list[tuple[bytes, bytes, bytes, bytes | None]], int]:
    """A protocol stream: wire messages for sid 7, a message for sid 9, a PING in between."""
    expected = []
    parts = []
    for n in range(200):
        payload = f'{{"n":{n}}}'.encode()
        if n % 3 == 0:
            header = f"NATS/1.0\r\nNats-Msg-Id: id-{n}\r\n\r\n".encode()
            reply = f"$JS.ACK.S.c.1.{n}.{n}.0.0".encode()
            parts.append(
                b"HMSG nexus.evt.a.b.c 7 %s %d %d\r\n%s%s\r\n"
                % (reply, len(header), len(header) + len(payload), header, payload)
            )
            expected.append((b"nexus.evt.a.b.c", reply, payload, header))
        elif n % 3 == 1:
            parts.append(b"MSG _INBOX.x.%d 7 %d\r\n%s\r\n" % (n, len(payload), payload))
            expected.append((b"_INBOX.x.%d" % n, b"", payload, None))
        else:
            parts.append(b"MSG _INBOX.x.%d 7 _INBOX.r %d\r\n%s\r\n" % (n, len(payload), payload))
            expected.append((b"_INBOX.x.%d" % n, b"_INBOX.r", payload, None))
        if n == 50:
            parts.append(b"PING\r\n")
        if n == 120:
            parts.append(b"MSG other 9 2\r\nhi\r\n")
    return b"".join(parts), expected, 1


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_messages_split_anywhere_reach_their_handler_in_order(seed: int) -> None:
    data, expected, _ = stream()
    client = FakeClient()
    parser = Parser(client)
    got: list[tuple[bytes, bytes, bytes, bytes | None]] = []
    stats = {"in_msgs": 0, "in_bytes": 0}

    def handler(subject: bytes, reply: bytes, payload: bytes, headers: bytes | None) -> None:
        got.append((subject, reply, payload, headers))

    # Messages that nats-py's own parser handles come back through _process_msg: route sid 7.
    async def process_msg(sid: int, subject: bytes, reply: bytes, payload: bytes, headers: bytes | None) -> None:
        if sid == 7:
            handler(subject, reply, payload, headers)
        else:
            client.slow.append((sid, subject, reply, payload, headers))

    client._process_msg = process_msg  # type: ignore[method-assign]
    parse = _fast_parse(parser, {7: handler}, stats)
    rng = random.Random(seed)
    offset = 0
    while offset < len(data):
        size = rng.choice([1, 2, 7, 50, 300, 5000])
        await parse(data[offset : offset + size])
        offset += size
    assert got == expected
    assert client.slow == [(9, b"other", b"", b"hi", None)]
    assert client.pings == 1
    assert not parser.buf


class CopyCountingBuffer(bytearray):
    """nats-py's parser buffer, counting the copies made of it whole."""

    copies = 0

    def __bytes__(self) -> bytes:
        type(self).copies += 1
        return bytes(memoryview(self))


async def test_a_large_message_arriving_over_many_reads_is_never_copied_whole() -> None:
    client = FakeClient()
    parser = Parser(client)
    parser.buf = CopyCountingBuffer()
    got: list[tuple[bytes, bytes, bytes, bytes | None]] = []

    def handler(subject: bytes, reply: bytes, payload: bytes, headers: bytes | None) -> None:
        got.append((subject, reply, payload, headers))

    parse = _fast_parse(parser, {7: handler}, {"in_msgs": 0, "in_bytes": 0})
    header = b"NATS/1.0\r\nNats-Msg-Id: big\r\n\r\n"
    big = bytes(range(256)) * 1024  # 256 KiB
    data = (
        b"MSG small 7 2\r\nhi\r\n"
        + b"HMSG nexus.evt.a.b.c 7 %d %d\r\n%s%s\r\n" % (len(header), len(header) + len(big), header, big)
        + b"MSG after 7 _INBOX.r 3\r\nend\r\n"
    )
    for offset in range(0, len(data), 1024):
        await parse(data[offset : offset + 1024])
    assert got == [
        (b"small", b"", b"hi", None),
        (b"nexus.evt.a.b.c", b"", big, header),
        (b"after", b"_INBOX.r", b"end", None),
    ]
    assert not parser.buf
    assert not client.slow  # every message went the fast way, none through nats-py's parser
    # Over 250 reads each added 1 KiB to a buffer holding the start of the large message: none
    # of them copied the buffer (which made receiving it quadratic in its size).
    assert CopyCountingBuffer.copies == 0


def test_header_block_refuses_bad_names_and_neutralises_line_breaks() -> None:
    block = header_block([("Nats-Msg-Id", "a\r\nPUB x 1"), ("traceparent", "00-ab-cd-01")])
    assert block == b"NATS/1.0\r\nNats-Msg-Id: a  PUB x 1\r\ntraceparent: 00-ab-cd-01\r\n\r\n"
    with pytest.raises(BusArgumentError):
        header_block([("Bad Name", "x")])
    with pytest.raises(BusArgumentError):
        check_subject("nexus.evt.a b")
    with pytest.raises(BusArgumentError):
        check_subject("nexus.evt.a\r\nPUB")


def test_received_headers_are_parsed_when_read() -> None:
    raw = b"NATS/1.0 404 No Messages\r\nNats-Msg-Id: x1\r\nNexus-Position: 12\r\n\r\n"
    assert parse_headers(raw) == {
        "Status": "404",
        "Description": "No Messages",
        "Nats-Msg-Id": "x1",
        "Nexus-Position": "12",
    }
    headers = LazyHeaders(b"NATS/1.0\r\nNats-Msg-Id: x1\r\n\r\n")
    assert "traceparent" not in headers
    assert headers.get("Nexus-Reply-To") is None
    assert headers["Nats-Msg-Id"] == "x1"
    assert dict(headers) == {"Nats-Msg-Id": "x1"}
    assert LazyHeaders(None) == {}


def test_a_nats_client_without_the_internals_the_wire_needs_is_refused_by_name() -> None:
    with pytest.raises(WireError, match=r"client has no _process_msg.*client has no _max_pending_size"):
        Wire(SimpleNamespace(_ps=Parser()))  # type: ignore[arg-type]


@pytest.mark.nats
async def test_the_check_covers_every_private_name_and_signature_on_a_real_client(nats_server: str) -> None:
    nc = await nats.connect(nats_server)
    try:
        assert _wire.check(nc) == []
        # Each private name the accelerator touches is checked: remove any one and it is named.
        for name in _wire._CLIENT_ATTRIBUTES:
            fake = SimpleNamespace(**{n: getattr(nc, n) for n in _wire._CLIENT_ATTRIBUTES if n != name})
            assert f"client has no {name}" in _wire.check(fake)
        for name in _wire._PARSER_ATTRIBUTES:
            parser = SimpleNamespace(**{n: getattr(nc._ps, n) for n in _wire._PARSER_ATTRIBUTES if n != name})
            fake = SimpleNamespace(**{n: getattr(nc, n) for n in _wire._CLIENT_ATTRIBUTES})
            fake._ps = parser
            assert f"parser has no {name}" in _wire.check(fake)

        # A changed signature is named too.
        async def send_command(data: bytes) -> None: ...

        fake = SimpleNamespace(**{n: getattr(nc, n) for n in _wire._CLIENT_ATTRIBUTES})
        fake._send_command = send_command
        assert any("_send_command takes" in problem for problem in _wire.check(fake))
        fake = SimpleNamespace(**{n: getattr(nc, n) for n in _wire._CLIENT_ATTRIBUTES})
        fake.stats = {"in_msgs": 0}
        assert "client stats has no out_bytes" in _wire.check(fake)
    finally:
        await nc.close()


def test_auto_runs_the_accelerator_only_on_the_tested_nats_py_versions(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert _wire.tested_version((2, 16, 0)) and not _wire.tested_version((2, 17, 0))
    assert not _wire.tested_version((2, 15, 9)) and not _wire.tested_version(())
    assert _wire.tested_version()  # the version in requirements.lock
    monkeypatch.setattr(_wire, "nats_py_version", lambda: (2, 99, 0))
    monkeypatch.setattr(_wire, "_warned", set())
    fake = SimpleNamespace()
    with caplog.at_level("WARNING", logger="nexus.bus"):
        assert _wire.choose("auto", fake) is False
        assert _wire.choose("auto", fake) is False
        assert _wire.choose("off", fake) is False
        # "on" still requires the check to pass.
        assert _wire.choose("on", fake) is False
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "2.99.0" in w]) == 1
    assert len([w for w in warnings if "cannot run" in w and "client has no _ps" in w]) == 1
    with pytest.raises(ValueError, match="auto, on, off"):
        _wire.choose("fast", fake)


@pytest.mark.nats
async def test_a_failed_check_falls_back_to_the_public_path_with_one_warning(
    nats_server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_wire, "check", lambda nc: ["client has no _ps"])
    monkeypatch.setattr(_wire, "_warned", set())
    with caplog.at_level("WARNING", logger="nexus.bus"):
        buses = [await JetStreamBus.connect(nats_server, accelerator="on") for _ in range(2)]
    try:
        assert [bus.accelerated for bus in buses] == [False, False]
        ack = await buses[0].publish("nexus.evt.test.thing.x", b"x")
        assert ack.seq == 1
    finally:
        for bus in buses:
            await bus.close()
    assert len([r for r in caplog.records if "cannot run" in r.getMessage()]) == 1


@pytest.mark.nats
async def test_the_fast_parser_is_on_the_read_path_when_the_accelerator_is_on(nats_server: str) -> None:
    bus = await JetStreamBus.connect(nats_server, accelerator="on")
    try:
        assert bus.accelerated and bus._wire is not None
        got: asyncio.Queue[Delivery] = asyncio.Queue()

        async def handler(delivery: Delivery) -> None:
            got.put_nowait(delivery)

        before = list(bus._wire.counts)
        await bus.consume(ConsumerSpec("fast", STREAM_EVT, ("nexus.evt.>",)), handler)
        await bus.publish_many([OutboundMessage(f"nexus.evt.test.thing.n{n}", b"x") for n in range(500)])
        for _ in range(500):
            await asyncio.wait_for(got.get(), 10)
        fast, slow = bus._wire.counts[0] - before[0], bus._wire.counts[1] - before[1]
        # 500 acks of the publishes and 500 pulled messages, nearly all split by the fast parser
        # (a message cut by a read boundary may finish in nats-py's parser).
        assert fast + slow >= 1000
        assert fast >= 0.9 * (fast + slow)
    finally:
        await bus.close()
    public = await JetStreamBus.connect(nats_server, accelerator="off")
    try:
        assert not public.accelerated and public._wire is None
        # nats-py's own parser, untouched.
        assert type(public.nc._ps).parse is Parser.parse
        assert public.nc._ps.parse.__func__ is Parser.parse  # type: ignore[attr-defined]
    finally:
        await public.close()


class Proxy:
    """A TCP proxy to the nats-server that can slip bytes into what the client receives."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.clients: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.clients.append(writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        assert self.server is not None
        for writer in self.clients:
            writer.close()
        self.server.close()


@pytest.mark.nats
@pytest.mark.parametrize("accelerator", ["on", "off"])
async def test_a_malformed_frame_makes_the_client_reconnect_instead_of_killing_its_reader(
    nats_server: str, accelerator: str
) -> None:
    url = urlsplit(nats_server)
    assert url.hostname is not None and url.port is not None
    proxy = Proxy(url.hostname, url.port)
    port = await proxy.start()
    bus = await JetStreamBus.connect(
        urlunsplit(url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{port}")), accelerator=accelerator
    )
    try:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def handler(delivery: Delivery) -> None:
            got.put_nowait(delivery.data)

        await bus.consume(ConsumerSpec("after-garbage", STREAM_EVT, ("nexus.evt.>",)), handler)
        await bus.publish("nexus.evt.test.thing.before", b"before")
        assert await asyncio.wait_for(got.get(), 10) == b"before"
        reconnects = bus.nc.stats["reconnects"]
        # A MSG for a live subscription whose size is not a number.
        sid = bus._pipeline._sub._id if isinstance(bus._pipeline, _Pipeline) else 1
        proxy.clients[-1].write(b"MSG nexus.x %d notanumber\r\nhi\r\n" % sid)
        async with asyncio.timeout(10):
            while bus.nc.stats["reconnects"] == reconnects:  # noqa: ASYNC110 - nats-py offers no event
                await asyncio.sleep(0.05)
        await bus.publish("nexus.evt.test.thing.after", b"after")
        assert await asyncio.wait_for(got.get(), 10) == b"after"
    finally:
        await bus.close()
        await proxy.stop()
