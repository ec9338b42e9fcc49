"""The workflow service: YAML workflows run as durable, event-sourced executions.

See ``context.py`` for the interfaces the service's modules share.
"""
