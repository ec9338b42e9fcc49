"""``python -m nexus.services.kam``: run KAM until SIGTERM or Ctrl-C."""

from nexus.runtime import run
from nexus.services.kam.bootstrap import bootstrap
from nexus.services.kam.settings import load_settings

raise SystemExit(run(bootstrap, load_settings))
