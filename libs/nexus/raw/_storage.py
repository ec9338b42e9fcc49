"""``RawStorage``: any backend with metrics, tracing and logging around it (seed 003's shape)."""

from __future__ import annotations

import logging
import time
from typing import Any

from nexus.hooks import Metrics, NoopMetrics, NoopTracer, Tracer
from nexus.raw._errors import RawError
from nexus.raw._port import DEFAULT_CONTENT_TYPE, RawBackend, RawPage, RawStat


class RawStorage(RawBackend):
    """Wraps a backend; counts operations (``raw_operations_total``), bytes and durations.

    Args:
        backend: Where the blobs are.
        metrics: Counters and observations (default: none).
        tracer: A span per operation (default: none).
        logger: Failures are logged here at debug level before they propagate.
    """

    def __init__(
        self,
        backend: RawBackend,
        *,
        metrics: Metrics | None = None,
        tracer: Tracer | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.backend = backend
        self.url = backend.url
        self._metrics = metrics or NoopMetrics()
        self._tracer = tracer or NoopTracer()
        self._logger = logger or logging.getLogger("nexus.raw")

    async def _run(self, op: str, key: str, call: Any) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        with self._tracer.span(f"raw.{op}", key=key):
            try:
                return await call
            except RawError as exc:
                outcome = type(exc).__name__
                self._logger.debug("raw %s %r failed: %s", op, key, exc)
                raise
            finally:
                self._metrics.increment("raw_operations_total", op=op, outcome=outcome)
                self._metrics.observe("raw_operation_seconds", time.perf_counter() - started, op=op)

    async def store(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat:
        stat: RawStat = await self._run("store", key, self.backend.store(key, data, content_type))
        self._metrics.increment("raw_bytes_stored_total", len(data))
        return stat

    async def store_if_absent(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat | None:
        stat: RawStat | None = await self._run(
            "store_if_absent", key, self.backend.store_if_absent(key, data, content_type)
        )
        if stat is not None:
            self._metrics.increment("raw_bytes_stored_total", len(data))
        return stat

    async def retrieve(self, key: str) -> bytes:
        data: bytes = await self._run("retrieve", key, self.backend.retrieve(key))
        self._metrics.increment("raw_bytes_retrieved_total", len(data))
        return data

    async def exists(self, key: str) -> bool:
        return bool(await self._run("exists", key, self.backend.exists(key)))

    async def stat(self, key: str) -> RawStat:
        result: RawStat = await self._run("stat", key, self.backend.stat(key))
        return result

    async def list(self, prefix: str = "", cursor: str | None = None, limit: int = 1000) -> RawPage:
        page: RawPage = await self._run("list", prefix, self.backend.list(prefix, cursor, limit))
        return page

    async def delete(self, key: str) -> None:
        await self._run("delete", key, self.backend.delete(key))

    async def close(self) -> None:
        await self.backend.close()
