"""Event data Structs, one module per producing service; importing registers them in CATALOG."""

from nexus.proto.events import granulator, kam, platform, studio, workflow

__all__ = ["granulator", "kam", "platform", "studio", "workflow"]
