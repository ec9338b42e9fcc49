"""``nexus studio providers add|list|remove``: the studio's providers from the command line.

The commands call the studio at ``NEXUS_STUDIO_URL`` (default
``http://127.0.0.1:$NEXUS_STUDIO_PORT``, port 8084) with the API key in ``NEXUS_SERVICE_KEY``:
a client key registers providers for its own blobs, an admin key for every client's (the
platform's)::

    nexus studio providers add providers/book-writer.yaml
    nexus studio providers list
    nexus studio providers remove book-writer

``add`` sends the file as it is (seed 004's YAML, or JSON); the studio checks it and a refusal
names the field. Exit 3 when the studio cannot be reached, 4 when the key is refused, 1 for any
other refusal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from nexus.cli.commands.workflow import CommandError, service_key

__all__ = ["register", "studio_url"]

DEFAULT_PORT = 8084
_TIMEOUT = aiohttp.ClientTimeout(total=30)


def studio_url(env: Mapping[str, str] | None = None) -> str:
    """The studio's base URL: ``NEXUS_STUDIO_URL``, else the local port.

    Raises:
        CommandError: a variable has a value that cannot be used.
    """
    env = os.environ if env is None else env
    url = (env.get("NEXUS_STUDIO_URL") or "").strip().rstrip("/")
    if url:
        if not url.startswith(("http://", "https://")):
            raise CommandError(f"NEXUS_STUDIO_URL={url!r} must be an http:// or https:// URL", 2)
        return url
    port = (env.get("NEXUS_STUDIO_PORT") or "").strip() or str(DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(f"NEXUS_STUDIO_PORT={port!r} is not a TCP port", 2)
    return f"http://127.0.0.1:{int(port)}"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("studio", help="the studio's providers (seed 004) from the command line")
    sub = parser.add_subparsers(dest="studio_command", metavar="WHAT", required=True)
    providers = sub.add_parser("providers", help="register, list and remove providers")
    actions = providers.add_subparsers(dest="providers_command", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="register a provider from a YAML or JSON file (again: replaces it)")
    add.add_argument("file", metavar="FILE", help="the provider document; - reads standard input")
    add.add_argument("--owner", help="admin keys: the client whose blobs it reacts to (default: every client's)")
    add.set_defaults(func=_add)
    listing = actions.add_parser("list", help="the providers reacting to the key's blobs")
    listing.add_argument("--json", action="store_true", help="print the answer as JSON")
    listing.set_defaults(func=_list)
    remove = actions.add_parser("remove", help="remove a provider by its id")
    remove.add_argument("provider_id", metavar="PROVIDER_ID")
    remove.add_argument("--owner", help="admin keys: whose provider (default: the platform's)")
    remove.set_defaults(func=_remove)


async def _call(method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    url = studio_url()
    headers = {"X-API-Key": service_key()}
    try:
        async with (
            aiohttp.ClientSession(timeout=_TIMEOUT) as http,
            http.request(method, url + path, data=body, headers=headers) as response,
        ):
            text = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CommandError(
            f"cannot reach the studio at {url} ({exc or type(exc).__name__}); is the platform running "
            "(`nexus up`)? NEXUS_STUDIO_URL or NEXUS_STUDIO_PORT says where it is",
            3,
        ) from None
    try:
        answer = json.loads(text) if text else None
    except ValueError:
        answer = text.decode(errors="replace")
    if response.status in (401, 403):
        raise CommandError(f"the studio refused the key ({response.status}): {_message(answer)}", 4)
    if response.status >= 400:
        raise CommandError(f"the studio answered {response.status}: {_message(answer)}", 1)
    return response.status, answer


def _message(answer: Any) -> str:
    if isinstance(answer, dict) and answer.get("message"):
        return str(answer["message"])
    return str(answer)[:300]


def _query(owner: str | None) -> str:
    from urllib.parse import quote

    return f"?owner={quote(owner, safe='')}" if owner else ""


def _main(work: Any) -> int:
    try:
        return int(asyncio.run(work()))
    except CommandError as exc:
        print(f"nexus studio: {exc.message}", file=sys.stderr)
        return exc.status


def _add(args: argparse.Namespace) -> int:
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"nexus studio: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2

    async def work() -> int:
        _, answer = await _call("POST", "/providers" + _query(args.owner), body)
        provider = answer.get("provider", {}) if isinstance(answer, dict) else {}
        workflows = ", ".join(str(w.get("workflow_id")) for w in answer.get("workflows", []))
        print(f"registered provider {provider.get('id')} for {answer.get('owner')}: {workflows}")
        return 0

    return _main(work)


def _list(args: argparse.Namespace) -> int:
    async def work() -> int:
        _, answer = await _call("GET", "/providers")
        if args.json:
            print(json.dumps(answer, indent=2, sort_keys=True))
            return 0
        for item in answer.get("providers", []):
            provider = item.get("provider", {})
            for workflow in item.get("workflows", []):
                events = ",".join(str(t.get("event")) for t in workflow.get("triggers", []))
                print(
                    f"{item.get('owner')}\t{provider.get('id')}\t{workflow.get('workflow_id')}\t"
                    f"priority {workflow.get('priority')}\t{events}"
                )
        return 0

    return _main(work)


def _remove(args: argparse.Namespace) -> int:
    async def work() -> int:
        from urllib.parse import quote

        await _call("DELETE", f"/providers/{quote(args.provider_id, safe='')}" + _query(args.owner))
        print(f"removed provider {args.provider_id}")
        return 0

    return _main(work)
