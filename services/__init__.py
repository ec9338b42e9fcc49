"""The four Nexus services: kam, workflow, granulator, studio. Each runs as ``python -m nexus.services.<name>``."""
