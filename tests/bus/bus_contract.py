"""The bus contract moved to ``nexus.testing.BusContract``; this name stays until every bus test
module imports it from there."""

from nexus.testing import BusContract

__all__ = ["BusContract"]
