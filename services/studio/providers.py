"""The studio's providers, their triggers, the delta transformer and lineage (being built)."""

from __future__ import annotations

from nexus.services.studio.context import StudioContext


def install(ctx: StudioContext) -> None:
    """Add these routes to the studio (being built)."""
