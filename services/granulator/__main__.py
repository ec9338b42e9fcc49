"""``python -m nexus.services.granulator``: the service on the runtime with the platform endpoints only.

A minimal entry point so that ``nexus up`` runs all four services; the granulator service's own
composition root replaces it.
"""

from nexus.runtime import Service, ServiceSettings, open_adapters, run


async def bootstrap(settings: ServiceSettings) -> Service:
    adapters = await open_adapters(settings)
    return Service(settings, log=adapters.log, bus=adapters.bus, title="Nexus granulator")


raise SystemExit(run(bootstrap, lambda: ServiceSettings.from_env("granulator")))
