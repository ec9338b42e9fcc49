"""Testing with Nexus: the ports' contract suites, seed 003's end-to-end context, a whole platform.

The contract suites are for adapters written inside or outside this repository.

Each port's behaviour is written once as a pytest test class with an abstract factory; an
adapter proves itself by subclassing it in a test module (the class name must start with
``Test`` for pytest to collect it) and implementing the factory::

    from nexus.testing import EventLogContract

    class TestMyEventLog(EventLogContract):
        async def make_log(self, tmp_path):
            return await MyEventLog.open(tmp_path / "events")

The suites are pytest code: this package imports pytest, so it needs the dev extras
(``pip install 'nexus[dev]'``: pytest and pytest-asyncio) and is never imported by a service.
Run them with pytest-asyncio in auto mode (``asyncio_mode = "auto"``), as Nexus does.

The suites, each with the factory to implement:

- ``EventLogContract`` (``nexus.eventlog.EventLog``): ``async make_log(tmp_path) -> EventLog``.
- ``BusContract`` (``nexus.bus.Bus``): ``async make_bus(tracer_provider) -> Bus``, or override
  the ``bus`` fixture when building the bus needs other fixtures (a server).
- ``RawContract`` (``nexus.raw.RawBackend``): ``async make_raw(tmp_path) -> RawBackend``.

Seed 003's end-to-end test utilities, for a pipeline test in one process::

    from nexus.proof import manifest_of_files, verify_manifest, FileListSource
    from nexus.testing import create_e2e_context, generate_test_events, write_test_file

    def test_pipeline(tmp_path):
        with create_e2e_context(max_raw_size=50 * 1024 * 1024, enable_metrics=True) as ctx:
            for event in generate_test_events(100):          # deterministic
                ctx.atlas.insert(event["id"], event)
            ...                                              # ctx.raw, ctx.clock.advance(5)
            path = write_test_file(ctx.tmp_dir, "data/summary.json", "{}")

- ``create_e2e_context(*, max_raw_size, enable_logging, enable_metrics, enable_tracing, start,
  tmp_dir) -> E2EContext``: ``atlas``, ``raw`` (memory, bounded), ``clock`` (moves when told),
  ``tmp_dir``, ``metrics``/``tracer`` recorders; ``cleanup()`` or a ``with`` block removes ``tmp_dir``.
- ``generate_test_events(count)``: the same list for the same count (``id``, ``index``, ``type``,
  ``timestamp`` in ms, ``data``).
- ``write_test_file(dir, name, content) -> Path``, ``read_test_file(path) -> bytes``.
- ``buildManifest(paths)`` / ``verifyManifest`` are ``nexus.proof.manifest_of_files`` and
  ``verify_manifest``; ``wait(ms)`` is ``asyncio.sleep``; ``withRetry`` is ``nexus.retry.with_retry``.

A whole platform for your own tests, ``nexus up`` on free ports with its data in a directory of
its own, stopped (as Ctrl-C stops it) when the block ends, also when the test fails::

    from nexus.testing import running_platform

    async def test_my_workflow(tmp_path):
        async with running_platform(tmp_path / "nexus", env={"NEXUS_SERVICE_MINE": my_url}) as nexus:
            key = await nexus.client_key("acme")             # an API key of client "acme"
            ...                                              # nexus.workflow_url, nexus.kam_url, nexus.nats_url

``RunningPlatform`` has each service's URL, ``env`` (for ``nexus`` commands against it), the
admin's password, ``client_key(client)`` and ``output_tail()`` for a failing assertion's message.
"""

import pytest

# The suites' asserts report their operands, as in a test module (before the import below).
pytest.register_assert_rewrite("nexus.testing._bus", "nexus.testing._eventlog", "nexus.testing._raw")

from nexus.testing._bus import BusContract  # noqa: E402
from nexus.testing._e2e import (  # noqa: E402
    E2EContext,
    create_e2e_context,
    generate_test_events,
    read_test_file,
    write_test_file,
)
from nexus.testing._eventlog import EventLogContract, InjectedFault, ev, evs, take  # noqa: E402
from nexus.testing._platform import PlatformError, RunningPlatform, running_platform  # noqa: E402
from nexus.testing._raw import BAD_KEYS, BAD_PREFIXES, RawContract  # noqa: E402

__all__ = [
    "BAD_KEYS",
    "BAD_PREFIXES",
    "BusContract",
    "E2EContext",
    "EventLogContract",
    "InjectedFault",
    "PlatformError",
    "RawContract",
    "RunningPlatform",
    "create_e2e_context",
    "ev",
    "evs",
    "generate_test_events",
    "read_test_file",
    "running_platform",
    "take",
    "write_test_file",
]
