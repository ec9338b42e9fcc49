"""The granulator: a worker that turns topics into content structures (seed 002, phases 5 to 7).

Protocol: handshake → process → acknowledge, over HTTP (``/api/...``, a worker token or a
client credential) and NATS (``nexus.cmd.granulator.<verb>``); every state change is an event
in stream ``granulation-<handshake_id>``, and every handshake belongs to a tenant and a worker:
nobody else sees it. Generators are pluggable (``builtin``, ``http``); a validation
loop scores each structure against questions derived from the request and regenerates below
the threshold. Outputs under 1 KB travel inline, larger ones as ``raw://`` references.
"""

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
