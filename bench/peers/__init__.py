"""The workflow suite's durable-execution peers, installed by the bench itself on first use.

The peers are not dependencies of Nexus, so they stay out of ``requirements.lock`` and of
``make test``: the first run of the workflow suite installs them under ``bench/.data/peers/``
(gitignored) and later runs reuse them while the pins below are unchanged.

- DBOS Transact and Restate's Python SDK (with Hypercorn to serve it) go into a venv of their
  own, from ``bench/peers/requirements.txt`` (every version pinned). Their programs,
  ``dbos_app.py`` and ``restate_app.py``, run in that venv as child processes.
- The Restate server is the binary that the npm package ``@restatedev/restate-server`` ships,
  installed with ``npm install --prefix`` at the version pinned here (install scripts off: the
  binary needs none, and the only one in the tree reports the download).

Where an install fails, :class:`PeerUnavailable` says why, and the suite prints that in the
peer's row and goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / ".data" / "peers"
"""Where the peers are installed (inside the gitignored ``bench/.data/``, which the runner keeps)."""
REQUIREMENTS = HERE / "requirements.txt"
RESTATE_SERVER_VERSION = "1.7.12"
"""The ``@restatedev/restate-server`` npm package the Restate rows are measured with."""


def pinned(package: str) -> str:
    """The version of ``package`` pinned in ``requirements.txt`` (to name it in the rows)."""
    for line in REQUIREMENTS.read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package.lower():
            return version.strip()
    return "?"


class PeerUnavailable(Exception):
    """A peer could not be installed or started; the message is the reason shown in its row."""


async def _run(what: str, *command: str | Path, timeout: float = 900) -> None:  # noqa: ASYNC109
    """Run an install command; a failure raises :class:`PeerUnavailable` naming ``what`` with the tail of its output."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, command), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PeerUnavailable(f"{what} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        tail = " / ".join(lines[-3:])[-400:]
        raise PeerUnavailable(f"{what} exited {proc.returncode}: {tail}")


def _stamp_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def peer_python() -> Path:
    """The Python of the peers' venv, created and filled from ``requirements.txt`` when missing or stale."""
    venv = DATA / "venv"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = _stamp_of(REQUIREMENTS.read_text() + sys.version)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print("   installing the peers' venv (DBOS, Restate's Python SDK, Hypercorn)", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    DATA.mkdir(parents=True, exist_ok=True)
    await _run("python -m venv", sys.executable, "-m", "venv", venv)
    await _run(
        "pip install -r bench/peers/requirements.txt",
        *(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", REQUIREMENTS),
    )
    stamp.write_text(wanted)
    return python


async def restate_server() -> Path:
    """The ``restate-server`` binary of the pinned npm package, installed when missing or another version."""
    prefix = DATA / "restate"

    def installed() -> Path | None:
        for package in sorted((prefix / "node_modules" / "@restatedev").glob("restate-server-*")):
            binary = package / "bin" / "restate-server"
            try:
                version = json.loads((package / "package.json").read_text()).get("version")
            except (OSError, ValueError):
                continue
            if version == RESTATE_SERVER_VERSION and binary.exists():
                return binary
        return None

    found = installed()
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise PeerUnavailable("npm is not on PATH (the Restate server ships as an npm package)")
    print(f"   installing @restatedev/restate-server@{RESTATE_SERVER_VERSION}", file=sys.stderr, flush=True)
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True, exist_ok=True)
    await _run(
        f"npm install @restatedev/restate-server@{RESTATE_SERVER_VERSION}",
        npm,
        "install",
        "--prefix",
        prefix,
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        f"@restatedev/restate-server@{RESTATE_SERVER_VERSION}",
    )
    found = installed()
    if found is None:
        raise PeerUnavailable(
            f"@restatedev/restate-server@{RESTATE_SERVER_VERSION} installed no server binary for this platform"
        )
    return found


def free_port() -> int:
    """A loopback port free right now (for the servers that cannot report the port 0 gave them)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
