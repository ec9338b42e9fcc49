"""What enters Nexus from outside: external CloudEvents and service commands.

``ExtIngest`` appends events published on ``nexus.ext.<source>.<event>`` to the log (stream
``ext-<source>``); the relay then republishes them as ``nexus.evt.ext.<source>.<event>``.
``CommandRouter`` serves ``nexus.cmd.<service>.<verb>`` for one service; ``send_command``
is the caller's side.
"""

from nexus.ingest._commands import CommandHandler, CommandRejected, CommandRouter, send_command
from nexus.ingest._ingest import (
    PRODUCER_REGISTERED,
    PRODUCERS_STREAM,
    ExtIngest,
    SourceTenants,
    ingested_id,
    register_producer,
)

__all__ = [
    "PRODUCERS_STREAM",
    "PRODUCER_REGISTERED",
    "CommandHandler",
    "CommandRejected",
    "CommandRouter",
    "ExtIngest",
    "SourceTenants",
    "ingested_id",
    "register_producer",
    "send_command",
]
