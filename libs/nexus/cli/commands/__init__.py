"""One module per top-level ``nexus`` command; each defines ``register(subparsers)``.

A command's handler is ``args.func(args) -> int`` (the exit status); async work runs inside it
with ``asyncio.run``.
"""
