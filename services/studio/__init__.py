"""Studio: blobs with full version history, providers and triggers, workflow outputs as deltas.

Run it alone with ``python -m nexus.services.studio``; ``nexus up`` runs it with the others.
"""
