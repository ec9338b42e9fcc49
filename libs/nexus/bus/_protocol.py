"""The NATS message format the bus writes and reads itself: header blocks, received headers.

No client library here: the JetStream adapter's accelerator (``_wire``) and its public path
share these, and the header checks are ``_subjects``' (the same for every adapter).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from nexus.bus._subjects import clean_headers


def header_block(headers: Iterable[tuple[str, str]]) -> bytes:
    """A NATS header block (``NATS/1.0`` line, ``Key: Value`` lines, blank line), validated.

    Keys must be HTTP tokens (else BusArgumentError); CR and LF in values become spaces.
    """
    parts = ["NATS/1.0\r\n"]
    for key, value in clean_headers(headers):
        parts.append(f"{key}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode()


def parse_headers(raw: bytes | None) -> dict[str, str]:
    """The header block of a received message as a dict (first line and blank lines skipped).

    A status line (``NATS/1.0 404 No Messages``) becomes ``Status`` and ``Description``, as
    nats-py reports it.
    """
    if not raw:
        return {}
    lines = raw.split(b"\r\n")
    out: dict[str, str] = {}
    first = lines[0]
    if len(first) > 9:
        status = first[9:].decode(errors="replace").strip()
        code, _, description = status.partition(" ")
        if code:
            out["Status"] = code
        if description:
            out["Description"] = description.strip()
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().decode(errors="replace")] = value.strip().decode(errors="replace")
    return out


class LazyHeaders(Mapping[str, str]):
    """A received header block, parsed only when a header is actually read.

    Most deliveries are only asked whether a ``traceparent`` or a reply header is present; a
    byte search of the raw block answers "absent" without building a dict.
    """

    __slots__ = ("_parsed", "_raw")

    def __init__(self, raw: bytes | None) -> None:
        self._raw = raw or b""
        self._parsed: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        if self._parsed is None:
            self._parsed = parse_headers(self._raw)
        return self._parsed

    def __contains__(self, key: object) -> bool:
        if self._parsed is None and (not isinstance(key, str) or key.encode() not in self._raw):
            return False
        return key in self._dict()

    def get(self, key: str, default: Any = None) -> Any:
        if self._parsed is None and key.encode() not in self._raw:
            return default
        return self._dict().get(key, default)

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._dict() == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"LazyHeaders({self._dict()!r})"
