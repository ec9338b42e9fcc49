"""``nexus demo``: run a workflow end to end on a throw-away platform, step by step.

1. start ``nexus up`` (embedded NATS, the relay and the four services) on free ports, with a
   temporary data directory;
2. issue a client API key in the platform's log (as ``nexus keys create --client`` does);
3. run the bundled ``text_expansion`` workflow through the workflow service's HTTP API: its step
   calls the granulator's ``/generate`` with the workflow replica's worker token; every transition
   is printed as it happens, then the output;
4. run one job through seed 000's job API with the Python client (``nexus.client.JobClient``):
   payload schema, initiate, execute, monitor, results, audit;
5. the AI factory of seed 002 through KAM (``nexus.client.KamClient``): the admin creates a
   client and its user; the user logs in and asks for a report; the admin asks for a template
   recommendation, assigns it and executes it; the user follows the request live, fetches the
   deliverable and reads the costs;
6. stop the platform and remove the temporary directory.

It exits 0 when every step succeeded. Nothing outside the temporary directory is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from nexus.auth import issue_key
from nexus.cli.commands.workflow import CommandError, command_error, follow_execution
from nexus.client import JobApiError, JobClient, KamApiError, KamClient, WorkflowApiError, WorkflowClient
from nexus.config import PlatformSettings
from nexus.eventlog import open_event_log
from nexus.runtime import SERVICES, port_variable

__all__ = ["DemoError", "register", "run_demo"]

WORKFLOW_ID = "text_expansion"
DEMO_INPUT = {
    "title": "a harbour at dawn",
    "text": "The boats came back before sunrise. The harbour smelled of salt and diesel.",
}
JOB_RECORD = {
    "title": "a mountain village",
    "text": "Snow closed the pass in November. The village lived on what it had stored.",
}
FACTORY_REQUEST = {
    "title": "Market analysis of AI developer tools",
    "description": "A comprehensive report on the market for AI developer tools: vendors, pricing, trends.",
    "urgency": "high",
    "category": "research",
}
FACTORY_SECONDS = 60.0
STOP_SECONDS = 15.0


class DemoError(Exception):
    """A step of the demo failed (the message says which and why)."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def demo_environment(data_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    """The environment of the throw-away platform: none of the caller's NEXUS_* settings leak in
    (its event log, NATS or external services must not be touched)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update(
        NEXUS_DATA_DIR=str(data_dir),
        NEXUS_HOST="127.0.0.1",
        NEXUS_LOG_LEVEL="warning",
        NEXUS_NATS_PORT=str(ports["nats"]),
        # The relay's health port too: a fixed default would collide with a platform already running.
        NEXUS_RELAY_PORT=str(ports["relay"]),
        # KAM's bootstrap admin, for the AI-factory scenario; random, never shown.
        NEXUS_ADMIN_USER="admin",
        NEXUS_ADMIN_PASSWORD=secrets.token_urlsafe(24),
        PYTHONUNBUFFERED="1",
    )
    for name in SERVICES:
        env[port_variable(name)] = str(ports[name])
    return env


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a workflow end to end on a throw-away platform",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=45.0, help="seconds to wait for the platform to start (45)"
    )
    parser.set_defaults(func=_demo_command)


def _demo_command(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(sys.stdout, ready_timeout=args.ready_timeout))


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step = 0

    def title(self, text: str) -> None:
        self.step += 1
        print(f"\n{self.step}. {text}", file=self.out, flush=True)

    def line(self, text: str = "") -> None:
        print(f"   {text}" if text else "", file=self.out, flush=True)


async def run_demo(out: TextIO, *, ready_timeout: float = 45.0) -> int:
    """Run the demo, printing to ``out``; the exit status (0: every step succeeded)."""
    say = _Printer(out)
    data_dir = Path(tempfile.mkdtemp(prefix="nexus-demo-"))
    names = ["nats", "relay", *SERVICES]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = demo_environment(data_dir, ports)
    print(f"Nexus demo: a throw-away platform in {data_dir}", file=out, flush=True)
    platform: asyncio.subprocess.Process | None = None
    output_path = data_dir / "nexus-up.log"
    status = 1
    try:
        say.title("Starting NATS, the relay and the four services (nexus up)")
        started = time.monotonic()
        with output_path.open("wb") as output:
            platform = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nexus.cli.main", "up", env=env, stdout=output, stderr=output
            )
        urls = {name: f"http://127.0.0.1:{ports[name]}" for name in SERVICES}
        await wait_ready(platform, urls, ready_timeout)
        say.line(f"ready in {time.monotonic() - started:.1f} s")
        for name, url in urls.items():
            say.line(f"{name:<11} {url}")

        say.title("Issuing a client API key (recorded in the platform's log as a hash)")
        log = await open_event_log(PlatformSettings.from_env(env).event_log_url)
        try:
            issued = await issue_key(log, "client", "nexus-demo", source="nexus/cli")
        finally:
            await log.close()
        say.line(f"key id {issued.info.key_id} for client 'nexus-demo' (the secret stays in this process)")

        await _run_workflow(say, urls["workflow"], issued.secret)
        await _run_job(say, urls["workflow"], issued.secret)
        await _run_factory(say, urls["kam"], env["NEXUS_ADMIN_PASSWORD"])
        status = 0
    except (DemoError, CommandError, JobApiError, KamApiError) as exc:
        message = exc.message if isinstance(exc, CommandError) else str(exc)
        print(f"\nnexus demo: {message}", file=sys.stderr, flush=True)
        tail = tail_file(output_path)
        if tail:
            print("last lines of the platform's output:\n" + tail, file=sys.stderr, flush=True)
    finally:
        say.title("Stopping the platform and removing the temporary directory")
        if platform is not None:
            await stop_platform(platform)
        shutil.rmtree(data_dir, ignore_errors=True)
        removed = not await asyncio.to_thread(data_dir.exists)
        say.line("done" if removed else f"could not remove {data_dir}")
    print("\nDemo finished: every step succeeded." if status == 0 else "\nDemo failed.", file=out, flush=True)
    return status


async def wait_ready(platform: asyncio.subprocess.Process, urls: dict[str, str], within: float) -> None:
    deadline = time.monotonic() + within
    pending = dict(urls)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while pending:
            if platform.returncode is not None:
                raise DemoError(f"nexus up exited with status {platform.returncode} before the platform was ready")
            if time.monotonic() > deadline:
                raise DemoError(f"not ready within {within:g} s: {', '.join(sorted(pending))}")
            for name, url in list(pending.items()):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with http.get(f"{url}/readyz") as response:
                        if response.status == 200:
                            del pending[name]
            if pending:
                await asyncio.sleep(0.2)


async def _run_workflow(say: _Printer, url: str, key: str) -> None:
    say.title(f"Running the bundled workflow {WORKFLOW_ID!r}: the granulator expands a text")
    try:
        async with WorkflowClient(url, key) as api:
            final = await _follow_workflow(say, api)
    except WorkflowApiError as exc:
        raise command_error(exc, url) from None
    duration = (final.get("timings") or {}).get("duration_ms")
    say.line(f"final state: {final['status']}" + (f" after {duration:.0f} ms" if duration is not None else ""))
    if final["status"] != "COMPLETED":
        raise DemoError(f"the execution ended {final['status']}: {final.get('error')}")
    _print_output(say, final.get("output") or {})


async def _follow_workflow(say: _Printer, api: WorkflowClient) -> dict[str, Any]:
    definition = await api.workflow(WORKFLOW_ID)
    steps = ", ".join(f"{s['id']} ({s['service']} {s['endpoint']})" for s in definition.get("steps", []))
    say.line(f"workflow {WORKFLOW_ID} version {definition.get('version')}: steps {steps}")
    say.line(f"input: {DEMO_INPUT}")
    accepted = await api.start(WORKFLOW_ID, DEMO_INPUT)
    say.line(f"execution {accepted['id']} queued")
    return await follow_execution(api, accepted["id"], _Indented(say))


async def _run_job(say: _Printer, url: str, key: str) -> None:
    say.title("One job through seed 000's job API, with the Python client (nexus.client.JobClient)")
    async with JobClient(url, key, poll_interval=0.5, timeout=30.0) as client:
        fields = await client.get_schema(WORKFLOW_ID)
        described = ", ".join(f"{f.name} ({f.type}{', required' if f.required else ''})" for f in fields.values())
        say.line(f"jobPayloadSchema of {WORKFLOW_ID}: {described}")
        job_id = await client.initiate(WORKFLOW_ID, JOB_RECORD["title"], "nexus demo")
        say.line(f"job {job_id} initiated")
        instance = await client.build_payload(fields, JOB_RECORD, job_id=job_id)
        executed = await client.execute(job_id, instance)
        say.line(f"executed: {executed.get('message') or executed}")

        seen: list[str] = []

        async def on_update(update: dict[str, Any]) -> None:
            status = str(update.get("status"))
            if not seen or seen[-1] != status:
                seen.append(status)
                say.line(f"status: {status}")

        final = await client.monitor(job_id, on_update=on_update)
        if final.get("status") != "COMPLETED":
            raise DemoError(f"the job ended {final.get('status')}: {final.get('error') or final}")
        results = await client.results(job_id)
        audit = await client.audit(job_id)
    output = results.get("results") if isinstance(results, dict) else None
    if not isinstance(output, dict):
        raise DemoError(f"the job's results carry no output: {results}")
    _print_output(say, output)
    trail = audit.get("auditTrail") or []
    say.line(f"audit trail from the log: {len(trail)} entries")
    for entry in trail[:12]:
        kind = entry.get("type") or entry.get("event") or entry.get("action") or ""
        say.line(f"  {entry.get('time', entry.get('timestamp', ''))}  {kind}")
    if len(trail) > 12:
        say.line(f"  … and {len(trail) - 12} more")


async def _run_factory(say: _Printer, url: str, admin_password: str) -> None:
    say.title("The AI factory of seed 002 through KAM, with the Python client (nexus.client.KamClient)")
    user, password = "ana@acme.example", secrets.token_urlsafe(16)
    async with KamClient(url) as admin, KamClient(url) as ana:
        await admin.login("admin", admin_password, login_type="admin")
        await admin.create_client("acme", name="Acme Corp", monthly_budget=100.0)
        await admin.create_user("acme", user, password)
        say.line(f"admin: created client 'acme' and its user {user}")
        login = await ana.login(user, password)
        say.line(f"{user}: logged in, permissions {', '.join(login['kamContext']['permissions'])}")
        request = await ana.create_request(**FACTORY_REQUEST)
        request_id = str(request["request_id"])
        say.line(f"{user}: request {request_id} {FACTORY_REQUEST['title']!r} ({request['status']})")

        transitions: list[str] = []

        async def follow() -> None:
            async for note in ana.notifications():
                kind = str(note.get("event") or "").removeprefix("nexus.kam.")
                data = note.get("data")
                if not isinstance(data, dict) or data.get("request_id") != request_id:
                    continue
                transitions.append(kind)
                say.line(f"{user}: notified {kind}")
                if kind in ("request.completed", "request.failed"):
                    return

        listener = asyncio.create_task(follow())
        try:
            recommended = await admin.recommend(request_id, {"budget": 50.0})
            ranked = recommended["recommendations"]
            if not ranked:
                raise DemoError("KAM recommended no template")
            for item in ranked[:3]:
                say.line(f"admin: recommended {item['template_name']} score {item['score']:.2f}: {item['reasons'][0]}")
            best = ranked[0]
            await admin.assign(request_id, best["template_id"], best["template_name"])
            started = await admin.execute(request_id)
            say.line(f"admin: assigned {best['template_name']}, execution {started['execution_id']} started")
            await asyncio.wait_for(listener, FACTORY_SECONDS)
        except TimeoutError:
            raise DemoError(f"the request did not finish within {FACTORY_SECONDS:g} s") from None
        finally:
            listener.cancel()
        final = await ana.request(request_id)
        if final["status"] != "completed":
            raise DemoError(f"the request ended {final['status']}: {final.get('error')}")
        metrics = final.get("metrics") or {}
        say.line(
            f"completed: {metrics.get('stages_completed')} stages, {metrics.get('tokens_used')} tokens, "
            f"{metrics.get('total_time_ms')} ms, estimated cost {metrics.get('estimated_cost')}"
        )
        listed = (await ana.deliverables(request_id))["deliverables"]
        for deliverable in listed:
            content = await ana.deliverable(str(deliverable["id"]))
            say.line(f"deliverable {deliverable['type']} {deliverable['storage_ref']} ({len(content)} bytes)")
        costs = await ana.costs("acme", group="template")
        say.line(f"costs of acme: {costs['total']} {costs['currency']}")
        for group in costs["groups"]:
            say.line(f"  {group['key']}: {group['amount']}")


def _print_output(say: _Printer, output: dict[str, Any]) -> None:
    say.line("output:")
    for name, value in output.items():
        if isinstance(value, str) and len(value) > 70:
            wrapped = textwrap.wrap(value, 90)
            say.line(f"  {name}:")
            for line in wrapped[:4]:
                say.line(f"    {line}")
            if len(wrapped) > 4:
                say.line(f"    … ({len(value.split())} words in all)")
        else:
            say.line(f"  {name}: {value}")


class _Indented:
    """A text stream that prints each line through the printer (transitions as they happen)."""

    def __init__(self, say: _Printer) -> None:
        self.say = say
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self.say.line(line.strip())
        return len(text)

    def flush(self) -> None:
        return None


async def stop_platform(platform: asyncio.subprocess.Process) -> None:
    if platform.returncode is None:
        # Ctrl-C, as a user stops `nexus up`: it stops the services and NATS it started.
        with contextlib.suppress(ProcessLookupError):
            platform.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(platform.wait(), STOP_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                platform.kill()
            await platform.wait()


def tail_file(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
