"""What every Nexus API client shares: its base URL, its key and one HTTP session."""

from __future__ import annotations

from typing import Self

import aiohttp


class ServiceSession:
    """A client's connection to one Nexus service: base URL, client key, an aiohttp session.

    The session is the caller's when one is passed (and left open), else created on first use
    and closed by ``close`` (or leaving ``async with``).

    Args:
        base_url: The service's URL (``http://127.0.0.1:8082``).
        service_key: The client API key (``x-service-key``).
        session: An aiohttp session to use instead of one of its own.
    """

    def __init__(self, base_url: str, service_key: str, *, session: aiohttp.ClientSession | None = None) -> None:
        if not service_key:
            raise ValueError("a service key is required (x-service-key)")
        self.base_url = base_url.rstrip("/")
        self._key = service_key
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session
