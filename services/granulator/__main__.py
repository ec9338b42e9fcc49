"""``python -m nexus.services.granulator``: run one granulator replica."""

from nexus.runtime import run
from nexus.services.granulator.bootstrap import bootstrap
from nexus.services.granulator.settings import load_settings

if __name__ == "__main__":
    raise SystemExit(run(bootstrap, load_settings))
