"""Event data Structs, one module per producing service; importing registers them in CATALOG."""

from nexus.proto.events import granulator, jobs, kam, phases, platform, studio, workflow

__all__ = ["granulator", "jobs", "kam", "phases", "platform", "studio", "workflow"]
