"""Pluggable generators: ``builtin`` (offline, deterministic) and ``http`` (OpenAI-compatible)."""

from nexus.services.granulator.generators._port import STRATEGIES, Generator, OutlineRequest, strategy_for
from nexus.services.granulator.generators.builtin import BuiltinGenerator
from nexus.services.granulator.generators.http import HttpGenerator

__all__ = ["STRATEGIES", "BuiltinGenerator", "Generator", "HttpGenerator", "OutlineRequest", "strategy_for"]
