"""Pluggable generators: ``builtin`` (offline, deterministic) and ``http`` (OpenAI-compatible).

The ``http`` validator is ``generators.http_validator.HttpValidator`` (the builtin one is
``validation.BuiltinValidator``); it is not imported here, since the validation module itself
imports this package.
"""

from nexus.services.granulator.generators._port import STRATEGIES, Generator, OutlineRequest, strategy_for
from nexus.services.granulator.generators.builtin import BuiltinGenerator
from nexus.services.granulator.generators.http import HttpGenerator

__all__ = ["STRATEGIES", "BuiltinGenerator", "Generator", "HttpGenerator", "OutlineRequest", "strategy_for"]
