"""KAM's requests, templates and their recommendation."""

from __future__ import annotations

from nexus.services.kam.context import KamContext


def install(ctx: KamContext) -> None:
    """Add these routes to KAM (being built)."""
