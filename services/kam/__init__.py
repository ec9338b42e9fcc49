"""KAM, the key-account manager: clients, logins and sessions, API keys, requests, costs.

Run it alone with ``python -m nexus.services.kam``; ``nexus up`` runs it with the others.
"""
