"""What enters Nexus from outside: external CloudEvents and service commands.

``ExtIngest`` appends events published on ``nexus.ext.<source>.<event>`` to the log (stream
``ext-<source>``); the relay then republishes them as ``nexus.evt.ext.<source>.<event>``.
``CommandRouter`` serves ``nexus.cmd.<service>.<verb>`` for one service; ``send_command``
is the caller's side.
"""

from nexus.ingest._commands import CommandHandler, CommandRejected, CommandRouter, send_command
from nexus.ingest._ingest import ExtIngest, ingested_id

__all__ = ["CommandHandler", "CommandRejected", "CommandRouter", "ExtIngest", "ingested_id", "send_command"]
