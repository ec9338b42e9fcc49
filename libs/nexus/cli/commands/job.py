"""``nexus job submit``: run seed 000's job flow for a record (JSON file or stdin) through the Python client."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from nexus.client import JobApiError, JobClient
from nexus.config import port_from_env


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("job", help="submit jobs to the workflow service's job API")
    sub = parser.add_subparsers(dest="job_command", metavar="SUBCOMMAND", required=True)
    submit = sub.add_parser(
        "submit",
        help="fetch the schema, initiate, upload files, build the payload, execute, monitor, print the results",
    )
    submit.add_argument("workflow_id", help="the workflow to run")
    submit.add_argument(
        "record", help="a JSON file with the record (an object, or an array for a batch); '-' reads stdin"
    )
    submit.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=KEY",
        help="payload field FIELD takes the record's KEY (repeatable; unmapped fields take the key of their name)",
    )
    submit.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="FIELD=PATH",
        help="upload PATH and pass its URL as FIELD (repeat the FIELD for an array_files field)",
    )
    submit.add_argument("--title", help="the job's title (default: the record's title)")
    submit.add_argument("--description", help="the job's description (default: the record's description)")
    submit.add_argument(
        "--url", help="workflow service URL (default NEXUS_WORKFLOW_URL, else 127.0.0.1:NEXUS_WORKFLOW_PORT)"
    )
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return without monitoring")
    submit.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the job (default 300)")
    submit.set_defaults(func=_submit)


def _pairs(values: list[str], option: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise SystemExit(f"nexus job submit: {option} {value!r} must be FIELD=VALUE")
        out.append((name, target))
    return out


def _submit(args: argparse.Namespace) -> int:
    key = os.environ.get("NEXUS_SERVICE_KEY") or os.environ.get("NEXUS_API_KEY")
    if not key:
        print(
            "nexus job submit: set NEXUS_SERVICE_KEY to an API key (nexus keys create --client NAME)", file=sys.stderr
        )
        return 2
    url = args.url or os.environ.get("NEXUS_WORKFLOW_URL")
    if not url:
        host = os.environ.get("NEXUS_HOST", "127.0.0.1")
        url = f"http://{host}:{port_from_env(os.environ, 'NEXUS_WORKFLOW_PORT', 8082)}"
    text = sys.stdin.read() if args.record == "-" else Path(args.record).read_text()
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"nexus job submit: the record is not JSON: {exc}", file=sys.stderr)
        return 2
    mapping = dict(_pairs(args.map, "--map"))
    files: dict[str, list[Path]] = {}
    for name, path in _pairs(args.file, "--file"):
        files.setdefault(name, []).append(Path(path))
    return asyncio.run(_run(url, key, args, loaded, mapping, files))


async def _run(
    url: str, key: str, args: argparse.Namespace, loaded: Any, mapping: dict[str, str], files: dict[str, list[Path]]
) -> int:
    async with JobClient(url, key, timeout=args.timeout, poll_interval=2.0) as client:
        try:
            schema = await client.get_schema(args.workflow_id)
        except JobApiError as exc:
            print(f"nexus job submit: {exc}", file=sys.stderr)
            return 1
        if isinstance(loaded, list):
            batch = await client.batch_trigger(args.workflow_id, loaded, mapping=mapping)
            print(json.dumps(batch.as_json(), indent=2))
            return 0 if batch.failed == 0 else 1
        if not isinstance(loaded, dict):
            print("nexus job submit: the record must be a JSON object (or an array of them)", file=sys.stderr)
            return 2
        record = dict(loaded)
        for name, paths in files.items():
            # Paths are uploaded by the client while it builds the payload.
            field = schema.get(name)
            record[mapping.get(name, name)] = paths if field is not None and field.type == "array_files" else paths[0]
        outcome = await client.trigger(
            args.workflow_id, record, mapping=mapping, title=args.title, description=args.description, schema=schema
        )
        if not outcome.success:
            print(f"nexus job submit: {outcome.error}", file=sys.stderr)
            return 1
        print(f"job {outcome.job_id} executing", file=sys.stderr)
        if args.no_wait:
            print(json.dumps({"jobExecutionId": outcome.job_id}))
            return 0
        assert outcome.job_id is not None  # a successful submission has its job id
        try:
            final = await client.monitor(outcome.job_id)
            out: dict[str, Any] = {"jobExecutionId": outcome.job_id, "status": final["status"]}
            out.update(await client.results(outcome.job_id))
        except JobApiError as exc:
            print(f"nexus job submit: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(out, indent=2, default=str))
        return 0 if final["status"] == "COMPLETED" else 1
