"""``nexus workflow register|run|status``: the workflow service's HTTP API from the command line.

The commands call the workflow service at ``NEXUS_WORKFLOW_URL`` (default
``http://127.0.0.1:$NEXUS_WORKFLOW_PORT``, port 8082) with the client API key in
``NEXUS_SERVICE_KEY`` (``nexus keys create --client NAME`` issues one)::

    nexus workflow register my-workflow.yaml
    nexus workflow run text_expansion --input '{"title": "Tea", "text": "Tea is a drink."}' --wait
    nexus workflow status 01J…

``run`` prints the execution id; with ``--wait`` it follows the execution (Server-Sent Events),
prints each transition (each event of its history) as it happens, then the final state and the
output, and exits 0 only when it completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from nexus.client import EXECUTION_FINAL_STATUSES, WorkflowApiError, WorkflowClient
from nexus.yamlsafe import YAMLInputError, load_yaml

__all__ = [
    "FINAL_STATUSES",
    "CommandError",
    "command_error",
    "describe_event",
    "format_state",
    "register",
    "service_key",
    "service_url",
]

DEFAULT_PORT = 8082
FINAL_STATUSES = EXECUTION_FINAL_STATUSES
RECONNECT_SECONDS = 0.5
"""Pause before following an execution again after its event stream ended early."""


class CommandError(Exception):
    """A failure the command reports in one line (and exits with ``status``)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def service_url(env: Mapping[str, str] | None = None) -> str:
    """The workflow service's base URL: ``NEXUS_WORKFLOW_URL``, else the local port.

    Raises:
        CommandError: a variable has a value that cannot be used.
    """
    env = os.environ if env is None else env
    url = (env.get("NEXUS_WORKFLOW_URL") or "").strip().rstrip("/")
    if url:
        if not url.startswith(("http://", "https://")):
            raise CommandError(f"NEXUS_WORKFLOW_URL={url!r} must be an http:// or https:// URL", 2)
        return url
    port = (env.get("NEXUS_WORKFLOW_PORT") or "").strip() or str(DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(f"NEXUS_WORKFLOW_PORT={port!r} is not a TCP port", 2)
    return f"http://127.0.0.1:{int(port)}"


def service_key(env: Mapping[str, str] | None = None) -> str:
    """The client API key from ``NEXUS_SERVICE_KEY``.

    Raises:
        CommandError: the variable is not set.
    """
    env = os.environ if env is None else env
    key = (env.get("NEXUS_SERVICE_KEY") or "").strip()
    if not key:
        raise CommandError(
            "NEXUS_SERVICE_KEY is not set: the workflow service needs a client API key "
            "(issue one with `nexus keys create --client NAME` and export NEXUS_SERVICE_KEY=<key>)",
            2,
        )
    return key


def command_error(exc: WorkflowApiError, url: str) -> CommandError:
    """The one-line report (and exit status) of a workflow API error.

    Exit 3: the service could not be reached; 4: the key was refused; 1: any other error.
    """
    if exc.status == 0:
        cause = exc.__cause__ or exc
        return CommandError(
            f"cannot reach the workflow service at {url} ({cause}); is the platform running "
            "(`nexus up`)? NEXUS_WORKFLOW_URL or NEXUS_WORKFLOW_PORT says where it is",
            3,
        )
    return CommandError(_error_text(exc.status, exc.body), 4 if exc.status in (401, 403) else 1)


def _error_text(status: int, body: Any) -> str:
    if not isinstance(body, dict):
        return f"the workflow service answered {status}"
    message = body.get("message") or body.get("error") or ""
    lines = [f"the workflow service answered {status}: {message}".rstrip(": ")]
    for problem in body.get("problems") or []:
        if isinstance(problem, dict):
            lines.append(f"  {problem.get('path', '$')}: {problem.get('message', '')}")
    if status == 401:
        lines.append("  (check NEXUS_SERVICE_KEY: the key is missing, unknown or revoked)")
    return "\n".join(lines)


# -- presentation ---------------------------------------------------------------------------


def describe_event(event: Mapping[str, Any]) -> str:
    """One line for one transition (an event of stream ``execution-<id>``)."""
    kind = str(event.get("type", "")).removeprefix("nexus.workflow.")
    raw_data = event.get("data")
    data: Mapping[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    at = str(event.get("time", ""))[11:23]
    detail = ""
    step = data.get("step_id")
    what = f"{step} (compensation)" if step and data.get("compensation") else step
    if kind == "execution.queued":
        detail = f"{data.get('workflow_id')} version {data.get('workflow_version')}, priority {data.get('priority')}"
    elif kind == "execution.claimed":
        detail = f"by {data.get('owner')}"
    elif kind == "step.started":
        detail = f"{what} (attempt {data.get('attempt')})"
    elif kind == "step.completed":
        detail = f"{what} in {float(data.get('duration_ms') or 0):.0f} ms"
    elif kind == "step.retrying":
        detail = f"{what}: {data.get('error')}; next attempt at {str(data.get('retry_at', ''))[11:23]}"
    elif kind in ("step.failed", "execution.failed", "execution.compensated"):
        detail = f"{what + ': ' if what else ''}{data.get('error')}"
    elif kind in ("step.skipped", "execution.compensating", "execution.cancel_requested"):
        detail = f"{what + ': ' if what else ''}{data.get('reason') or data.get('error') or ''}".rstrip(": ")
    return f"  {at}  {kind:<24} {detail}".rstrip()


def format_state(state: Mapping[str, Any]) -> str:
    """A readable summary of an execution's state."""
    timings = state.get("timings") or {}
    lines = [
        f"execution {state.get('id')}",
        f"  workflow   {state.get('workflow_id')} (version {state.get('workflow_version')})",
        f"  status     {state.get('status')}",
    ]
    if state.get("current_step") and state.get("status") not in FINAL_STATUSES:
        lines.append(f"  step       {state['current_step']}")
    if timings.get("duration_ms") is not None:
        lines.append(f"  duration   {timings['duration_ms']:.0f} ms")
    for step_id, step in (state.get("steps") or {}).items():
        extra = f" ({step['attempts']} attempts)" if step.get("attempts", 0) > 1 else ""
        lines.append(f"  - {step_id}: {step.get('status')}{extra}")
    if state.get("error"):
        lines.append(f"  error      {state['error']}")
    if state.get("output") is not None:
        lines.append("  output")
        lines += ["    " + line for line in json.dumps(state["output"], indent=2, ensure_ascii=False).splitlines()]
    return "\n".join(lines)


# -- commands -------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "workflow",
        help="register workflows and schemas, run executions, show their status",
        description=(
            "Call the workflow service at NEXUS_WORKFLOW_URL (default http://127.0.0.1:$NEXUS_WORKFLOW_PORT, "
            "port 8082) with the client API key in NEXUS_SERVICE_KEY."
        ),
    )
    sub = parser.add_subparsers(dest="workflow_command", metavar="ACTION", required=True)
    reg = sub.add_parser("register", help="register a workflow or a schema (YAML or JSON file)")
    reg.add_argument("file", metavar="FILE", help="a workflow definition (with steps) or a schema (with definition)")
    reg.set_defaults(func=_register)
    run = sub.add_parser("run", help="start an execution and print its id")
    run.add_argument("workflow_id", metavar="WORKFLOW_ID")
    run.add_argument("--input", default=None, metavar="JSON|@FILE", help="the input: JSON text, or @file (JSON/YAML)")
    run.add_argument("--priority", type=int, default=50, metavar="N", help="0-100, higher starts first (50)")
    run.add_argument("--idempotency-key", default=None, metavar="KEY", help="the same key returns the same execution")
    run.add_argument("--wait", action="store_true", help="follow the execution and print its transitions and output")
    run.set_defaults(func=_run)
    status = sub.add_parser("status", help="show an execution's status, steps and output")
    status.add_argument("execution_id", metavar="EXECUTION_ID")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.set_defaults(func=_status)


def _main(work: Callable[[WorkflowClient], Any]) -> int:
    try:
        url, key = service_url(), service_key()

        async def go() -> int:
            async with WorkflowClient(url, key) as client:
                try:
                    return int(await work(client) or 0)
                except WorkflowApiError as exc:
                    raise command_error(exc, url) from None

        return asyncio.run(go())
    except CommandError as exc:
        return _fail(exc)


def document_kind(document: Mapping[str, Any]) -> str:
    """``"schema"`` for a seed 004 schema (a ``definition``), ``"workflow"`` for one with ``steps``.

    Raises:
        CommandError: neither.
    """
    if "steps" in document:
        return "workflow"
    if "definition" in document:
        return "schema"
    raise CommandError("the file is neither a workflow (it has no steps) nor a schema (it has no definition)", 2)


def _read_document(path: str) -> tuple[bytes, dict[str, Any]]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}", 2) from None
    try:
        parsed = load_yaml(raw, what=f"file {path}")
    except YAMLInputError as exc:
        raise CommandError(str(exc), 2) from None
    if not isinstance(parsed, dict):
        raise CommandError(f"{path} must hold one mapping (a workflow or a schema)", 2)
    return raw, parsed


def _fail(exc: CommandError) -> int:
    print(f"nexus workflow: {exc.message}", file=sys.stderr)
    return exc.status


def _register(args: argparse.Namespace) -> int:
    try:
        raw, parsed = _read_document(args.file)
        kind = document_kind(parsed)
    except CommandError as exc:
        return _fail(exc)

    async def work(api: WorkflowClient) -> int:
        stored = await api.register(raw, kind)
        # A schema's own "version" is its document's (e.g. "1.0"); the registry numbers it apart.
        version = stored.get("registry_version") if kind == "schema" else stored.get("version")
        print(f"registered {kind} {stored.get('id')}, version {version}")
        return 0

    return _main(work)


def parse_input(text: str | None) -> Any:
    """``--input``: JSON text, or ``@file`` holding JSON or YAML; absent means ``{}``.

    Raises:
        CommandError: naming what is wrong.
    """
    if text is None:
        return {}
    if text.startswith("@"):
        path = text[1:]
        try:
            content = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"--input {text}: cannot read {path}: {exc.strerror or exc}", 2) from None
        try:
            return load_yaml(content, what=f"file {path}")
        except YAMLInputError as exc:
            raise CommandError(f"--input {text}: {exc}", 2) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--input is not valid JSON ({exc}); pass JSON text or @file", 2) from None


class TextSink(Protocol):
    """Where ``follow_execution`` prints: a text stream (``sys.stdout``) or anything that writes lines."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


async def follow_execution(api: WorkflowClient, execution_id: str, out: TextSink) -> dict[str, Any]:
    """Print each transition of an execution as it happens, until it is final; its final state.

    The event stream says when the state changed; the execution's history (its events) says
    exactly which transitions happened, so none is missed when several come at once.
    """
    printed = 0

    async def catch_up() -> None:
        nonlocal printed
        events = await api.history(execution_id)
        for event in events[printed:]:
            print(describe_event(event), file=out, flush=True)
        printed = max(printed, len(events))

    while True:
        async for state in api.follow(execution_id):
            await catch_up()
            if state.get("status") in FINAL_STATUSES:
                return state
        # The stream ended before a final state (the service restarted, or a proxy closed an idle
        # connection): the state as it is now, and if it is still going, follow it again.
        state = await api.get(execution_id)
        await catch_up()
        if state.get("status") in FINAL_STATUSES:
            return state
        await asyncio.sleep(RECONNECT_SECONDS)


def _run(args: argparse.Namespace) -> int:
    try:
        payload = parse_input(args.input)
    except CommandError as exc:
        return _fail(exc)
    if not 0 <= args.priority <= 100:
        print(f"nexus workflow: --priority {args.priority} must be between 0 and 100", file=sys.stderr)
        return 2

    async def work(api: WorkflowClient) -> int:
        accepted = await api.start(
            args.workflow_id, payload, priority=args.priority, idempotency_key=args.idempotency_key
        )
        print(accepted["id"], flush=True)
        if not args.wait:
            return 0
        final = await follow_execution(api, accepted["id"], sys.stdout)
        print(format_state(final))
        return 0 if final.get("status") == "COMPLETED" else 1

    return _main(work)


def _status(args: argparse.Namespace) -> int:
    async def work(api: WorkflowClient) -> int:
        state = await api.get(args.execution_id)
        print(json.dumps(state, indent=2, ensure_ascii=False) if args.json else format_state(state))
        return 0

    return _main(work)
