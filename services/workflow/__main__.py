"""``python -m nexus.services.workflow``: run the workflow service."""

from nexus.runtime import run
from nexus.services.workflow.bootstrap import bootstrap
from nexus.services.workflow.settings import load_settings

raise SystemExit(run(bootstrap, load_settings))
