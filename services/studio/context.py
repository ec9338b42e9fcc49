"""What the studio's route modules share: the service, its settings, the state fold and how to append to it.

Each module (``blobs``, ``providers``, ``seedroutes``) has an ``install(ctx)`` that declares its
routes on ``ctx.service``. A handler changes nothing in memory: it appends events with
``ctx.fold.append`` (returning once this replica's fold has them) and answers from ``ctx.state``,
so every replica tells the same story and a restart loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nexus.auth import KeyInfo
from nexus.replay import LiveFold
from nexus.runtime import Service
from nexus.services.studio.settings import StudioSettings
from nexus.services.studio.state import STUDIO_TYPES, StudioState

__all__ = ["StudioContext"]


@dataclass
class StudioContext:
    """The studio's shared parts; built by ``bootstrap``, handed to every module's ``install``."""

    service: Service
    settings: StudioSettings
    fold: LiveFold[StudioState] = field(init=False)

    def __post_init__(self) -> None:
        self.fold = LiveFold(self.service.log, StudioState(), types=STUDIO_TYPES, name="studio")

    @property
    def state(self) -> StudioState:
        """Everything the studio knows, as folded so far."""
        return self.fold.state

    @property
    def source(self) -> str:
        """The ``source`` of the studio's events."""
        return f"nexus/{self.service.name}"

    @staticmethod
    def actor(info: KeyInfo) -> str:
        """Who a caller is (for ``created_by``): ``key:<id>`` or ``worker:<name>``."""
        return f"worker:{info.owner}" if info.kind == "worker" else f"key:{info.key_id}"
