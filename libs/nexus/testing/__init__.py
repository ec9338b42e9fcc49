"""The ports' contract suites, for adapters written inside or outside this repository.

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
"""

import pytest

# The suites' asserts report their operands, as in a test module (before the import below).
pytest.register_assert_rewrite("nexus.testing._bus", "nexus.testing._eventlog", "nexus.testing._raw")

from nexus.testing._bus import BusContract  # noqa: E402
from nexus.testing._eventlog import EventLogContract, InjectedFault, ev, evs, take  # noqa: E402
from nexus.testing._raw import BAD_KEYS, BAD_PREFIXES, RawContract  # noqa: E402

__all__ = [
    "BAD_KEYS",
    "BAD_PREFIXES",
    "BusContract",
    "EventLogContract",
    "InjectedFault",
    "RawContract",
    "ev",
    "evs",
    "take",
]
