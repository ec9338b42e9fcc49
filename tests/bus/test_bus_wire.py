"""The wire layer's parser front end and header helpers, fed protocol bytes split anywhere."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from nats.protocol.parser import Parser

from nexus.bus import BusArgumentError
from nexus.bus._protocol import LazyHeaders, header_block, parse_headers
from nexus.bus._subjects import check_subject
from nexus.bus._wire import Wire, WireError, _fast_parse


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
    with pytest.raises(WireError, match=r"_process_msg.*requirements\.lock"):
        Wire(SimpleNamespace(_ps=Parser()))  # type: ignore[arg-type]
