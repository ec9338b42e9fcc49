"""The granulator: a worker that turns topics into content structures (seed 002, phases 5 to 7).

Protocol: handshake → process → acknowledge, over HTTP (``/api/...``, a worker token or a
client credential) and NATS (``nexus.cmd.granulator.<verb>``); every state change is an event
in stream ``granulation-<handshake_id>``, and every handshake belongs to a tenant and a worker:
nobody else sees it. Generators are pluggable (``builtin``, ``http``); a validation
loop scores each structure against questions derived from the request and regenerates below
the threshold. Outputs under 1 KB travel inline, larger ones as ``raw://`` references.

The names below are resolved on first use (PEP 562), not when the package is imported: the
package's modules import their siblings through it (``from nexus.services.granulator import
handlers``), so a package that imported ``bootstrap`` eagerly was a cycle (package → bootstrap →
api → worker → package), and importing ``model`` alone loaded aiohttp and the whole service.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexus.services.granulator.bootstrap import bootstrap, make_generator, make_worker
    from nexus.services.granulator.generators import (
        STRATEGIES,
        BuiltinGenerator,
        Generator,
        HttpGenerator,
        OutlineRequest,
    )
    from nexus.services.granulator.handlers import Caller, Limits
    from nexus.services.granulator.model import (
        STRUCTURE_TYPES,
        GeneratorOutputError,
        GeneratorUnavailableError,
        GranulatorError,
        Structure,
        ValidationConfig,
        ValidationResult,
    )
    from nexus.services.granulator.settings import GranulatorSettings, load_settings
    from nexus.services.granulator.validation import derive_questions, run_with_validation, score
    from nexus.services.granulator.worker import Granulator

_EXPORTS = {
    "bootstrap": "bootstrap",
    "make_generator": "bootstrap",
    "make_worker": "bootstrap",
    "STRATEGIES": "generators",
    "BuiltinGenerator": "generators",
    "Generator": "generators",
    "HttpGenerator": "generators",
    "OutlineRequest": "generators",
    "Caller": "handlers",
    "Limits": "handlers",
    "STRUCTURE_TYPES": "model",
    "GeneratorOutputError": "model",
    "GeneratorUnavailableError": "model",
    "GranulatorError": "model",
    "Structure": "model",
    "ValidationConfig": "model",
    "ValidationResult": "model",
    "GranulatorSettings": "settings",
    "load_settings": "settings",
    "derive_questions": "validation",
    "run_with_validation": "validation",
    "score": "validation",
    "Granulator": "worker",
}
"""Each public name and the module (of this package) that defines it."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    # Bound after the import: importing the ``bootstrap`` module set this package's attribute
    # ``bootstrap`` to the module, and the public name is the function.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "STRATEGIES",
    "STRUCTURE_TYPES",
    "BuiltinGenerator",
    "Caller",
    "Generator",
    "GeneratorOutputError",
    "GeneratorUnavailableError",
    "Granulator",
    "GranulatorError",
    "GranulatorSettings",
    "HttpGenerator",
    "Limits",
    "OutlineRequest",
    "Structure",
    "ValidationConfig",
    "ValidationResult",
    "bootstrap",
    "derive_questions",
    "load_settings",
    "make_generator",
    "make_worker",
    "run_with_validation",
    "score",
]
