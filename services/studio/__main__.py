"""``python -m nexus.services.studio``: run Studio until SIGTERM or Ctrl-C."""

from nexus.runtime import run
from nexus.services.studio.bootstrap import bootstrap
from nexus.services.studio.settings import load_settings

raise SystemExit(run(bootstrap, load_settings))
