"""`edgeflix fleet serve`: gRPC (appliances; health checking and reflection on) and HTTP
(FastAPI: CLI, services, /metrics) on one asyncio loop over one FleetService and SQLite.
With `[server] tls = true` both serve TLS only, under the fleet's CA (fleet/tls.py); HTTP
stays plain if `http_tls = false`.

Background ticks rotate keys on schedule, re-plan, and read the origin's catalog. Prints
`grpc on HOST:PORT` and `http on http(s)://HOST:PORT` once bound (port 0 works).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgeflix import pidlock
from edgeflix.config import format_hostport, parse_hostport
from edgeflix.http.runner import fit_connections, install_signals
from edgeflix.http.server import ServerSettings, bind
from edgeflix.log import event
from edgeflix.proto.codec import MAX_MESSAGE_BYTES
from edgeflix.proto.gen import fleet_pb2, fleet_pb2_grpc
from fleet.admin import TOKEN_FILE, AdminAccess, is_loopback, load_or_create_token
from fleet.config import FleetConfig, ServerConfig
from fleet.errors import FleetError, FleetInputError
from fleet.grpc_api import FleetServicer
from fleet.http import create_app, steering_protocol
from fleet.model import check_title
from fleet.planning import Planning
from fleet.service import FleetService, OriginTitle
from fleet.store import Store, StoreError, check_db_path, private_folder
from fleet.tls import CA_CERT, CA_KEY, CertAuthority, https_context, listener_hosts

log = logging.getLogger("fleet")
SERVICE_NAME = fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].full_name
SHUTDOWN_GRACE_S = 5.0
TICK_S = 1.0
SOFT_STATE_SAVE_S = 300.0
# Sooner while the database took no write since one failed: the save is retried, and its
# going through is what says the database takes writes again when nothing else writes.
SOFT_STATE_RETRY_S = 30.0
# A tick failing tick after tick (the database's disk full) is said once, then this often.
TICK_FAILED_LOG_S = 60.0


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: this process owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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


class OriginCatalog:
    """The origin's `GET /titles`, read every poll and parsed only when its bytes changed:
    thousands of titles parsed and looked up in the database every few seconds were, on
    the loop that answers /steer, tens of ms of stall for a catalogue that rarely moves."""

    def __init__(self, origin_url: str) -> None:
        self.url = origin_url.rstrip("/") + "/titles"
        self._digest = b""
        self._read = b""

    async def read(self, client: httpx.AsyncClient) -> list[OriginTitle] | None:
        """The titles, or None when the answer is the one applied last time."""
        resp = await client.get(self.url)
        resp.raise_for_status()
        digest = hashlib.sha256(resp.content).digest()
        if digest == self._digest:
            return None
        titles = catalog_from_json(resp.json())
        self._read = digest
        return titles

    def applied(self) -> None:
        """The titles read last are stored: the same answer is not applied again. Not
        before: a listing whose database write failed is applied again on the next poll."""
        self._digest = self._read


def catalog_from_json(doc: Any) -> list[OriginTitle]:
    """The origin's `GET /titles` answer; ValueError when it is not one (`[origin] url`
    names another server). Entries no origin makes (a title id that is no safe path
    component, a record that is not an object) are left out, not planned."""
    titles = doc.get("titles") if isinstance(doc, dict) else None
    if not isinstance(titles, list):
        raise ValueError("the answer to GET /titles has no 'titles' list: is [origin] url right?")
    out = []
    for t in titles:
        if not isinstance(t, dict) or not isinstance(t.get("id"), str):
            continue
        try:
            title_id = check_title(t["id"])
            # What an appliance stores: the media and files.json (an older origin lists
            # only the media; the planner's headroom absorbs the difference then).
            total = int(t.get("total_bytes") or 0) + int(t.get("files_json_bytes") or 0)
        except (FleetInputError, TypeError, ValueError):
            continue
        digest = t.get("digest")
        out.append(OriginTitle(title_id, digest if isinstance(digest, str) else "", total))
    if titles and not out:
        # Read as an empty catalogue it would withdraw every title from steering.
        raise ValueError(f"none of the {len(titles)} entries of GET /titles is a title")
    return out


class TickHealth:
    """How the background ticks fare, for the log, `/healthz` and `/metrics`. A failing
    tick is logged when the trouble starts, then once a minute with how many failed since:
    with the database's disk full every planning round failed, a line every 2 s that said
    nothing new and buried the rest.

    A failed store write stays the problem until the store takes one again (its changes
    count moves on a tick that does not fail): ticks that write nothing say nothing of the
    disk, and clearing on them made a full disk read healthy between planning rounds."""

    def __init__(self, db: str | Path, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db = str(db)
        self.monotonic = monotonic
        self.tick_problem: str | None = None  # why the last tick failed
        self.store_problem: str | None = None  # why the store's last write failed
        self._changes = 0  # the store's changes count when that write failed
        self._failed = 0  # ticks failed since the trouble started
        self._unlogged = 0  # of which not said yet
        self._logged_at = float("-inf")

    def problem(self) -> str | None:
        """What /healthz reports: None when all is well."""
        if self.store_problem is not None:
            return f"writes to {self.db} fail: {self.store_problem}"
        if self.tick_problem is not None:
            return f"background work (key rotation, planning) is failing: {self.tick_problem}"
        return None

    def store_writable(self) -> bool:
        return self.store_problem is None

    def failed(self, error: str, store: bool, changes: int) -> None:
        now = self.monotonic()
        first = self.problem() is None
        self.tick_problem = error
        if store:
            self.store_problem, self._changes = error, changes
        self._failed += 1
        self._unlogged += 1
        if not first and now - self._logged_at < TICK_FAILED_LOG_S:
            return
        if store:
            action = (
                "free space on, or repair, the filesystem holding it: until then no plan, key "
                "rotation or count is saved (steering and beats go on)"
            )
        else:
            action = "retried every tick; key rotation and planning wait for it"
        fields: dict[str, Any] = {"error": error, "db": self.db, "action": action}
        if not first:
            fields["failed_ticks"] = self._unlogged
        event(log, "fleet.tick_failed", logging.ERROR, **fields)
        self._logged_at, self._unlogged = now, 0

    def passed(self, changes: int) -> None:
        if self.problem() is None:
            return
        self.tick_problem = None
        if self.store_problem is not None and changes != self._changes:
            self.store_problem = None
        if self.problem() is None:
            event(log, "fleet.tick_recovered", failed_ticks=self._failed, db=self.db)
            self._failed = self._unlogged = 0
            self._logged_at = float("-inf")


def _store_changes(svc: FleetService) -> int:
    """Rows the manager's database connection has written since it opened (a statement
    whose transaction then failed counts too: read after a failure, it is the baseline)."""
    try:
        return svc.store.conn.total_changes
    except sqlite3.Error:  # closed: the manager is stopping
        return -1


async def ticker(
    svc: FleetService,
    config: FleetConfig,
    planning: Planning,
    monotonic: Callable[[], float] = time.monotonic,
    health: TickHealth | None = None,
) -> None:
    """Key rotation, re-planning, catalog reads and keeping popularity; a failure is
    logged (TickHealth), never fatal. Intervals are timed on `monotonic`, not the wall
    clock: a wall clock stepped back (NTP, an RTC kept in local time) stopped planning,
    origin polls and soft-state saves for as long as the step, for good after a step of
    years."""
    health = health if health is not None else TickHealth(config.server.db, monotonic)
    last_plan = last_poll = float("-inf")
    last_save = monotonic()
    origin = OriginCatalog(config.origin.url)
    async with httpx.AsyncClient(timeout=10.0) as client:
        while True:
            now = monotonic()
            try:
                svc.maybe_rotate_keys()
                if now - last_poll >= config.origin.poll_s:
                    last_poll = now
                    try:
                        titles = await origin.read(client)
                        if titles is not None:
                            svc.set_origin_titles(titles)
                            origin.applied()
                    # InvalidURL is no HTTPError: a URL httpx cannot use is the origin's
                    # fault, not a failed tick that skips planning and saves.
                    except (httpx.HTTPError, httpx.InvalidURL, ValueError, KeyError) as exc:
                        event(log, "fleet.origin_unreadable", logging.WARNING, error=str(exc))
                # A new appliance gets its first plan on its first beats, not minutes later.
                fresh = svc.replan_due and all(n in svc.beats for n in svc.records)
                if fresh or now - last_plan >= config.planner.interval_s:
                    last_plan = now
                    await planning.replan()
                every = SOFT_STATE_SAVE_S if health.store_writable() else SOFT_STATE_RETRY_S
                if now - last_save >= every:
                    last_save = now
                    svc.save_soft_state()
            except (FleetError, sqlite3.Error) as exc:
                store = isinstance(exc, StoreError | sqlite3.Error)
                health.failed(str(exc), store, _store_changes(svc))
            except Exception as exc:
                # Anything else too: a ticker that died would silently stop key rotation
                # and planning for as long as the manager runs.
                health.failed(f"{type(exc).__name__}: {exc}", False, _store_changes(svc))
            else:
                health.passed(_store_changes(svc))
            await asyncio.sleep(TICK_S)


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
    fleet_pb2_grpc.add_FleetServicer_to_server(FleetServicer(svc, authority), grpc_server)
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
            create_app(svc, admin, planning, ticks),
            http=steering_protocol(svc, max_connections=limits.max_connections),
            ws="none",  # no websocket route: an upgrade request is answered as HTTP
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,  # players reach the manager directly; no proxy to trust
            # Ours, built and loaded above (TLS 1.2 at least): a bad key or certificate
            # stops the start here, not the HTTP task after "started" is announced.
            ssl_context_factory=None if https is None else lambda _config, _default: https,
        )
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
    tick_task = asyncio.create_task(ticker(svc, config, planning, health=ticks))
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
