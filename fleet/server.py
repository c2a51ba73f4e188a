"""`edgeflix fleet serve`: gRPC (appliances; health checking and reflection on) and HTTP
(FastAPI: CLI, services, /metrics) on one asyncio loop over one FleetService and SQLite.
With `[server] tls = true` both serve TLS only, under the fleet's CA (fleet/tls.py); HTTP
stays plain if `http_tls = false`.

Background ticks (fleet/ticker.py) rotate keys on schedule, re-plan, and read the origin's
catalog. Prints `grpc on HOST:PORT` and `http on http(s)://HOST:PORT` once bound (port 0
works).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import sqlite3
import ssl
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import cast

import grpc
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgeflix import pidlock
from edgeflix.configtypes import format_hostport, parse_hostport
from edgeflix.http.runner import fit_connections, install_signals
from edgeflix.http.server import ServerSettings, bind
from edgeflix.log import event
from edgeflix.proto.codec import MAX_MESSAGE_BYTES
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from fleet.admin import TOKEN_FILE, AdminAccess, is_loopback, load_or_create_token
from fleet.config import FleetConfig, ServerConfig
from fleet.errors import FleetError
from fleet.grpc_api import FleetServicer
from fleet.http import create_app, steering_protocol
from fleet.http_protocol import BoundedHttpToolsProtocol, TlsHandshake
from fleet.planning import Planning
from fleet.service import FleetService
from fleet.store import Store, check_db_path, private_folder
from fleet.ticker import CatalogueReads, TickHealth, ticker
from fleet.tls import (
    CA_CERT,
    CA_KEY,
    CertAuthority,
    https_context,
    listener_hosts,
    retire_https_pair,
)

log = logging.getLogger("fleet")
SERVICE_NAME = fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].full_name
SHUTDOWN_GRACE_S = 5.0


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling (this process owns SIGTERM/SIGINT/SIGHUP),
    and with HTTPS handshakes run by fleet/http_protocol.py's TlsHandshake."""

    def __init__(self, config: uvicorn.Config, handshake_timeout_s: float) -> None:
        super().__init__(config)
        self.handshake_timeout_s = handshake_timeout_s

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start on our bound sockets, with HTTPS accepted as plain TCP and the
        handshake run by TlsHandshake: so a connection counts against the cap from its
        accept, and the handshake is bounded (`[server] tls_handshake_timeout_s`; asyncio's
        60 s otherwise, which uvicorn never changes)."""
        if sockets is None or self.config.ssl is None:
            await super().startup(sockets)
            return
        await self.lifespan.startup()  # lifespan "off": nothing, as in uvicorn's own
        config, context, loop = self.config, self.config.ssl, asyncio.get_running_loop()

        def create_protocol() -> asyncio.Protocol:
            app = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )
            return TlsHandshake(
                cast(BoundedHttpToolsProtocol, app), context, self.handshake_timeout_s
            )

        self.servers = [
            await loop.create_server(create_protocol, sock=sock, backlog=config.backlog)
            for sock in sockets
        ]
        self.started = True


def _bind(address: str) -> socket.socket:
    """A listening socket, its family from resolving the host (a name may have only an
    IPv6 address), as every other listener here binds."""
    host, port = parse_hostport(address)
    try:
        sock = bind(host, port)
    except OSError as exc:  # gaierror too: a name that does not resolve
        raise FleetError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _check_free(address: str) -> None:
    """Refuse a gRPC address another process holds, or no interface has, in one line of our
    own: gRPC only says "Failed to add port", after logging its own line to stderr."""
    if parse_hostport(address)[1] == 0:  # any free port: nothing to check
        return
    _bind(address).close()  # as the HTTP listener binds, so the same words for the same fault


def _addresses(host: str) -> list[str]:
    """The addresses `host` names, as the listener binds it."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)]


def _beyond_loopback(address: str, resolve: Callable[[str], Iterable[str]]) -> bool:
    """Whether other machines reach a listener on `address`. A host that does not resolve
    counts as beyond loopback: said rather than not."""
    host, _ = parse_hostport(address)
    try:
        addresses = list(resolve(host))
    except OSError:  # gaierror too
        return True
    return not addresses or not all(is_loopback(a) for a in addresses)


def grpc_in_clear(
    server: ServerConfig, resolve: Callable[[str], Iterable[str]] = _addresses
) -> bool:
    """Whether other machines reach the gRPC listener without TLS: there the URL-signing
    key secrets (GetKeys) and join tokens (Enrol) cross the network in clear."""
    return not server.tls and _beyond_loopback(server.grpc, resolve)


def http_in_clear(
    server: ServerConfig, resolve: Callable[[str], Iterable[str]] = _addresses
) -> bool:
    """Whether `http_tls = false` keeps the HTTP listener plain, with tls on, where other
    machines reach it: their callers' admin token crosses the network in clear (with either
    `admin` mode: only callers on this machine go without it). With tls off,
    `grpc_in_clear` already asks for tls, which covers HTTP too."""
    return server.tls and not server.https and _beyond_loopback(server.http, resolve)


def warn_in_clear(grpc_at: str) -> None:
    """Said once at start when `grpc_in_clear`; a home lab's LAN may accept that, so the
    manager starts anyway."""
    event(log, "fleet.grpc_in_clear", logging.WARNING, grpc=grpc_at,
          reason="[server] tls is off and gRPC listens beyond loopback: the URL-signing keys "
          "and join tokens cross the network unencrypted",
          action="set [server] tls = true and [server] enrol_grpc = HOST:PORT; give each "
          "appliance fleet-ca.pem (made beside [server] db) as [fleet] ca, and enrol_grpc as "
          "[fleet] enrol_url")  # fmt: skip


def warn_http_in_clear(http_at: str) -> None:
    """Said once at start when `http_in_clear`: an operator's choice (plain scrapes and
    health checks), so the manager starts anyway."""
    event(log, "fleet.http_in_clear", logging.WARNING, http=http_at,
          reason="[server] http_tls = false and HTTP listens beyond loopback: the admin token "
          "of callers from other machines crosses the network unencrypted",
          action="remove [server] http_tls (it then follows tls: HTTPS), or keep [server] "
          "http on loopback")  # fmt: skip


def sole_manager(db: Path) -> pidlock.ProcessLock:
    """A lock beside `db` held for the manager's life (the kernel drops it if it dies): two
    managers on one database would each rotate keys and plan, and one's writes be lost.

    Beside the database's real path (symlinks and `..` resolved), where SQLite opens it
    too: a second manager given a symlink to the database locked a file of its own and
    ran. Not on the database file itself: closing any descriptor of that file drops every
    POSIX lock this process's SQLite holds on it, and pidlock writes its pid into the file
    it locks and removes it after a failed start. A hard link, another name of the file in
    another folder, no lock file beside one name can see: refused (hard_linked)."""
    try:
        real = db.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError before 3.13
        raise FleetError(f"cannot resolve the database path {db}: {exc}") from None
    hard_linked(real)
    try:
        return pidlock.take(Path(f"{real}.lock"))
    except pidlock.LockHeld as exc:
        pid = f" (pid {exc.pid})" if exc.pid else ""
        shown = str(db) if real == Path(os.path.abspath(db)) else f"{db} (which is {real})"
        raise FleetError(f"another fleet manager{pid} uses this database: {shown}") from None


def hard_linked(db: Path) -> None:
    """Refuse a database file with more than one name (a hard link): each name gets its own
    -wal and -shm from SQLite, so a manager (or `fleet` command) on the other name writes
    past this one's, and no lock file beside one name is seen from the other."""
    try:
        links = db.stat().st_nlink
    except OSError:  # missing (made new), or unreadable: the store's open says why
        return
    if links > 1:
        raise FleetError(
            f"the fleet database {db} has {links} names (hard links): SQLite keeps a -wal "
            f"and -shm per name, so another name's users would corrupt it; remove the other "
            f"links (find / -xdev -samefile {db}) or use a copy"
        )


def warn_new_database(db: Path) -> None:
    """Said at start when the database is new while files made with an earlier one are
    beside it: the database was lost, or a backup restored to the wrong place. Those files
    outlive it (the admin token, the CA), but the enrolments went with it, so every
    appliance is refused until it enrols again. A -wal or -shm beside it is the old one's:
    one restoring a backup over them would have SQLite apply them to it."""
    try:
        new = db.stat().st_size == 0  # SQLite takes an empty file as a new database
    except FileNotFoundError:
        new = True
    except OSError:  # unreadable: the store's open says why
        return
    if not new:
        return
    beside = [Path(f"{db}-wal"), Path(f"{db}-shm")]
    beside += [db.parent / name for name in (TOKEN_FILE, CA_CERT, CA_KEY)]
    earlier = ", ".join(str(p) for p in beside if p.exists())
    if earlier:
        event(
            log,
            "fleet.database_new",
            logging.WARNING,
            reason=f"fleet database {db} is new but {earlier} from an earlier one are beside it",
            action="appliances enrolled before must be given new join tokens; if you meant "
            f"to restore a backup, stop and copy it in (delete {db.name}-wal and -shm first)",
        )


async def serve(config: FleetConfig) -> None:
    # First: a Ctrl-C in start-up raised KeyboardInterrupt into gRPC's half-started tasks
    # (tracebacks on the terminal) and left what had started unstopped. SIGHUP (`kill -HUP`
    # meant for an appliance, a closed terminal) killed the manager, its soft state unsaved;
    # nothing here reloads in place, so it is one line and the manager keeps running.
    stop = asyncio.Event()
    install_signals(asyncio.get_running_loop(), stop)
    db = Path(config.server.db)
    check_db_path(db)  # a folder named by mistake: refused before a lock is made beside it
    try:
        private_folder(db)  # 0700 before the lock file is made in it
    except OSError as exc:
        raise FleetError(f"cannot prepare the database {db}: {exc.strerror or exc}") from None
    lock = sole_manager(db)
    started = False

    def up() -> None:
        nonlocal started
        started = True

    try:
        await _serve(config, stop, up)
    finally:
        # A start that failed (a file that is no database, a port in use) leaves no lock
        # file it made; one that ran keeps it for the next start.
        if started:
            lock.release()
        else:
            lock.discard()


async def _serve(config: FleetConfig, stop: asyncio.Event, started: Callable[[], None]) -> None:
    # Before anything else is made or logged (only the lock above is): a second manager on
    # the same ports stops here.
    for address in (config.server.grpc, config.server.enrol_grpc if config.server.tls else None):
        if address is not None:
            _check_free(address)
    # Resolved here: nothing is served yet.
    in_clear, http_clear = grpc_in_clear(config.server), http_in_clear(config.server)
    # Descriptors: the soft limit raised toward the hard one (a shell's 1024 is common), and
    # the public HTTP port's connections capped to fit in half of it (fleet/http.py makes
    # room past the cap), so a crowd there leaves the rest to the appliances' gRPC, the
    # database and the planner.
    limits = fit_connections(ServerSettings(open_files=0))
    warn_new_database(Path(config.server.db))  # before the store makes it
    store = Store(Path(config.server.db))
    svc = FleetService(config, store)
    ticks = TickHealth(config.server.db)
    svc.maybe_rotate_keys()

    tls = config.server
    authority = CertAuthority.load_or_create(Path(tls.db).parent) if tls.tls else None
    # No SO_REUSEPORT: a second manager started on the same port must fail, not silently
    # take half of the appliances' connections.
    grpc_server = grpc.aio.server(
        options=(
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        )
    )
    # The origin's catalogue, read by the ticker's polls and at once for a Steer of a title
    # it did not list (a new one), HTTP or gRPC, one read at a time; the ticker closes it.
    catalogue = CatalogueReads(svc, config.origin)
    servicer = FleetServicer(svc, authority, catalogue, health=ticks)
    fleet_pb2_grpc.add_FleetServicer_to_server(servicer, grpc_server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
    )
    ghost, gport = parse_hostport(config.server.grpc)
    enrol_at = ""
    https: ssl.SSLContext | None = None
    try:
        if authority is None or tls.enrol_grpc is None:
            bound = grpc_server.add_insecure_port(format_hostport(ghost, gport))
        else:
            ehost, eport = parse_hostport(tls.enrol_grpc)
            # One certificate for every listener: the HTTP API carries the admin token and
            # signed URLs, so it is TLS too (unless http_tls = false), under the CA the CLI
            # is given (EDGEFLIX_FLEET_CA).
            http_hosts = [parse_hostport(tls.http)[0]] if tls.https else []
            hosts = listener_hosts([ghost, ehost, *http_hosts], tls.tls_names)
            ident = authority.server_identity(hosts)
            if tls.https:
                https = https_context(ident, Path(tls.db).parent)
            pairs = [(ident.key_pem, ident.cert_pem)]
            mtls = grpc.ssl_server_credentials(pairs, ident.ca_pem, require_client_auth=True)
            bound = grpc_server.add_secure_port(format_hostport(ghost, gport), mtls)
            ebound = grpc_server.add_secure_port(
                format_hostport(ehost, eport), grpc.ssl_server_credentials(pairs)
            )
            enrol_at = format_hostport(ehost, ebound)
    except RuntimeError as exc:
        raise FleetError(f"cannot listen on {config.server.grpc}: {exc}") from None
    try:
        token, token_path = load_or_create_token(Path(config.server.db).parent)
    except OSError as exc:
        raise FleetError(
            f"cannot keep the admin token beside {config.server.db}: {exc.strerror}"
        ) from None
    admin = AdminAccess(config.server.admin, token, str(token_path))
    http_sock = _bind(config.server.http)
    planning = Planning(svc)  # its process starts now, ready by the first round
    hhost, hport = http_sock.getsockname()[:2]
    http = _HttpServer(
        uvicorn.Config(
            create_app(svc, admin, planning, ticks, catalogue),
            http=steering_protocol(svc, limits.max_connections, catalogue),
            ws="none",  # no websocket route: an upgrade request is answered as HTTP
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,  # players reach the manager directly; no proxy to trust
            # Ours, built and loaded above (TLS 1.2 at least): a bad key or certificate
            # stops the start here, not the HTTP task after "started" is announced.
            ssl_context_factory=None if https is None else lambda _config, _default: https,
        ),
        config.server.tls_handshake_timeout_s,
    )
    scheme = "http" if https is None else "https"

    await grpc_server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    if stop.is_set():  # a signal during start-up: stop what started, announce nothing
        http_sock.close()
        await _stop(health_servicer, grpc_server, planning, svc, store)
        return
    http_task = asyncio.create_task(http.serve(sockets=[http_sock]))
    tick_task = asyncio.create_task(
        ticker(svc, config, planning, health=ticks, catalogue=catalogue)
    )
    # What is alive now (modules, schemas, the registry, the loaded state) lives as long as
    # the process. Frozen, it is out of the collector's sight: a full collection walked it
    # all, ~35 ms with the loop stopped, which was most of /steer's p99.
    gc.collect()
    gc.freeze()
    grpc_at, http_at = format_hostport(ghost, bound), format_hostport(hhost, hport)
    print(f"grpc on {grpc_at}", flush=True)
    print(f"http on {scheme}://{http_at}", flush=True)
    if enrol_at:
        print(f"grpc-enrol on {enrol_at}", flush=True)
    started()
    event(log, "fleet.started", grpc=grpc_at, http=http_at, http_scheme=scheme,
          admin=config.server.admin, admin_token=str(token_path))  # fmt: skip
    if https is None:  # once started: a start that fails changes nothing beside the db
        retire_https_pair(Path(tls.db).parent, Path(tls.db))
    if in_clear:
        warn_in_clear(grpc_at)
    if http_clear:
        warn_http_in_clear(http_at)
    await asyncio.wait([http_task, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
    await _stop(health_servicer, grpc_server, planning, svc, store, http, http_task, tick_task)


async def _stop(
    health_servicer: health.aio.HealthServicer,
    grpc_server: grpc.aio.Server,
    planning: Planning,
    svc: FleetService,
    store: Store,
    http: _HttpServer | None = None,
    http_task: asyncio.Task[None] | None = None,
    tick_task: asyncio.Task[None] | None = None,
) -> None:
    """Shutdown, in order: 1. health says NOT_SERVING so clients move on; 2. HTTP stops
    accepting and finishes requests in flight; 3. gRPC gets a grace period for calls in
    flight; 4. background ticks stop; 5. the database closes (every write is committed).
    The HTTP server and the ticks are absent when a signal came during start-up."""
    await health_servicer.enter_graceful_shutdown()
    if http is not None and http_task is not None:
        http.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(http_task, SHUTDOWN_GRACE_S)
    await grpc_server.stop(SHUTDOWN_GRACE_S)
    if tick_task is not None:
        tick_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick_task
    planning.close()
    try:
        svc.save_soft_state()
    except (FleetError, sqlite3.Error) as exc:
        event(log, "fleet.soft_state_unsaved", logging.ERROR, error=str(exc))
    store.close()
    event(log, "fleet.stopped")
