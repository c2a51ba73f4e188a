"""The fleet's own certificate authority for `[server] tls = true`: a P-256 CA made at first
start and kept next to the database (its key 0600, its certificate 0644: public), one server
certificate for the gRPC listeners and the HTTPS one (`https_context`), and client
certificates issued at enrolment (fleet/grpc_api.py) for the appliance's TLS key.

P-256 throughout: grpc's BoringSSL refuses Ed25519 client certificates, so the appliance's
Ed25519 call-signing key (edgeflix/proto/auth.py) stays separate from its TLS key.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import logging
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeflix import pidlock
from edgeflix.atomicfile import write_atomic
from edgeflix.configtypes import is_wildcard_host
from edgeflix.log import event
from fleet.errors import FleetError, FleetInputError

log = logging.getLogger("fleet")

CA_KEY = "fleet-ca.key"
CA_CERT = "fleet-ca.pem"
HTTP_KEY = "fleet-http.key"
HTTP_CERT = "fleet-http.pem"
# Public, unlike its key: every appliance and CLI user needs it, and a copy made with cp or
# install (to /etc/edgeflix/, say) keeps the mode, so others can read it there.
CA_CERT_MODE = 0o644
CA_DAYS = 3650
# No renewal protocol yet: a client certificate lives as long as the CA; `fleet rm` plus a
# new enrolment is how an appliance's certificate is replaced.
CLIENT_DAYS = 3650
SERVER_DAYS = 825
# Every certificate is valid from a day before it is made: appliances without a real-time
# clock or NTP (a Raspberry Pi) often run minutes or hours behind the manager, and the server
# certificate is made anew at each manager start, so a box behind by more than a few minutes
# failed TLS after every restart. Each certificate still lives its `*_DAYS` in all.
BACKDATE = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def listener_hosts(addresses: list[str], extra: tuple[str, ...]) -> tuple[str, ...]:
    """Names the server certificate must carry: each listener's host (a wildcard bind
    stands for this machine's name and loopback) plus the operator's extra names."""
    hosts: list[str] = []
    for host in addresses:
        if not host or is_wildcard_host(host):  # any spelling: [0:0::0], 0, ::ffff:0.0.0.0
            hosts += [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
        else:
            hosts.append(host)
    return tuple(dict.fromkeys([*hosts, *extra]))


def _publish(cert_path: Path) -> None:
    """Earlier versions wrote the CA certificate 0600: widened to 0644 when it is ours. A
    mode the operator chose otherwise is left, and so is a file the chmod cannot change (a
    read-only mount): only other users' reading is at stake, not the start."""
    info = cert_path.stat()
    if stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid():
        with contextlib.suppress(OSError):
            cert_path.chmod(CA_CERT_MODE)


@dataclass(frozen=True)
class ServerIdentity:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes


class CertAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self.ca_pem = cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(cls, folder: Path) -> CertAuthority:
        key_path, cert_path = folder / CA_KEY, folder / CA_CERT
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if key_path.exists() and cert_path.exists():
                key = serialization.load_pem_private_key(key_path.read_bytes(), None)
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise FleetError(f"{key_path} is not an EC key; remove both CA files")
                _publish(cert_path)
                return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
            key = ec.generate_private_key(ec.SECP256R1())
            since = _now() - BACKDATE
            cert = (
                x509.CertificateBuilder()
                .subject_name(_name("edgeflix fleet CA"))
                .issuer_name(_name("edgeflix fleet CA"))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(since)
                .not_valid_after(since + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(key, hashes.SHA256())
            )
            write_atomic(key_path, _pem_key(key))
            write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), CA_CERT_MODE)
            return cls(key, cert)
        except OSError as exc:
            raise FleetError(f"cannot keep the fleet CA in {folder}: {exc.strerror}") from None
        except ValueError as exc:
            raise FleetError(f"the fleet CA in {folder} is unreadable ({exc})") from None

    def _issue(
        self,
        cn: str,
        public_key: ec.EllipticCurvePublicKey,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        days: int,
    ) -> bytes:
        since = _now() - BACKDATE  # see BACKDATE
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(since)
            .not_valid_after(since + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def server_identity(self, hosts: tuple[str, ...]) -> ServerIdentity:
        """A fresh server certificate each start, so a changed listener address is covered."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(
            "edgeflix fleet",
            key.public_key(),
            [_san(h) for h in hosts],
            ExtendedKeyUsageOID.SERVER_AUTH,
            SERVER_DAYS,
        )
        return ServerIdentity(_pem_key(key), cert, self.ca_pem)

    def client_cert(self, appliance: str, tls_public_key: bytes) -> bytes:
        """A client certificate naming `appliance` (CN and DNS SAN) for its P-256 key (DER)."""
        try:
            key = serialization.load_der_public_key(tls_public_key)
        except (ValueError, UnsupportedAlgorithm):
            raise FleetInputError("tls_public_key is not a DER public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise FleetInputError("tls_public_key must be an ECDSA P-256 key")
        return self._issue(
            appliance, key, [x509.DNSName(appliance)], ExtendedKeyUsageOID.CLIENT_AUTH, CLIENT_DAYS
        )


def https_context(ident: ServerIdentity, folder: Path) -> ssl.SSLContext:
    """The HTTP listener's TLS (1.2 at least) with `ident`. Python's ssl loads a certificate
    and key only from files: they are written (0600, replaced each start) into `folder`,
    beside the CA's own key."""
    key_path, cert_path = folder / HTTP_KEY, folder / HTTP_CERT
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Said in the handshake: what the CLI's probe (fleet/cli.py) tells from a gRPC port's TLS.
    context.set_alpn_protocols(["http/1.1"])
    try:
        write_atomic(key_path, ident.key_pem)
        write_atomic(cert_path, ident.cert_pem)
        context.load_cert_chain(cert_path, key_path)
    except OSError as exc:  # ssl.SSLError too
        why = exc.strerror or exc
        raise FleetError(f"cannot keep the HTTPS certificate in {folder}: {why}") from None
    return context


def https_pair_not_ours(key_pem: bytes | None, cert_pem: bytes, ca_pem: bytes) -> str | None:
    """Why an HTTPS key and certificate (`key_pem` None: the key is gone) are not the pair
    `https_context` made under this CA, or None when they are: the certificate issued by
    the CA, and the key the certificate's. Pure: the caller reads the files."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return f"{HTTP_CERT} or {CA_CERT} is no PEM certificate"
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return f"{HTTP_CERT} was not issued by {CA_CERT}"
    if key_pem is None:
        return None
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return f"{HTTP_KEY} is no unencrypted PEM private key"
    if key.public_key() != cert.public_key():
        return f"{HTTP_KEY} is not the key of {HTTP_CERT}"
    return None


def _own_file(path: Path) -> bytes | None:
    """The file's bytes if it is a regular file (not a link) of this user, else None."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        return None
    return path.read_bytes()


def _held(lock: Path) -> bool:
    """Whether a process holds `lock` (pidlock's flock); True when it cannot be told. The
    probe's own lock is shared and dropped at once: a manager starting just then is not
    kept out by more than that instant."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held
        return True
    finally:
        os.close(fd)  # drops the probe's lock
    return False


def other_manager(folder: Path, db: Path) -> str | None:
    """Why another running manager may use the HTTPS pair in `folder` (one pair per folder,
    one manager per database): the database in `folder`, not `db`, whose lock
    (fleet/server.py `sole_manager`: DB.lock beside it) is held; None when there is none."""
    own = f"{os.path.realpath(db)}.lock"  # as sole_manager names it
    for lock in sorted(folder.glob("*.lock")):
        if os.path.realpath(lock) == own or not lock.with_suffix("").is_file():
            continue  # ours, or a lock of no database
        if _held(lock):
            pid = pidlock.holder(lock)
            by = f" (pid {pid})" if pid else ""
            return f"another fleet manager{by} runs on {lock.with_suffix('')} in this folder"
    return None


def _not_ours(folder: Path, present: list[Path]) -> str | None:
    """Why the HTTPS files `present` in `folder` may not be the pair https_context made
    there, or None when they are."""
    key_path, cert_path = folder / HTTP_KEY, folder / HTTP_CERT
    cert = _own_file(cert_path) if cert_path in present else None
    key = _own_file(key_path) if key_path in present else None
    ca = (folder / CA_CERT).read_bytes() if (folder / CA_CERT).is_file() else None
    if cert is None or (key is None and key_path in present):
        return "not a regular file of this user, or no certificate beside the key"
    if ca is None:
        return f"no {CA_CERT} beside it to tell this manager made it"
    return https_pair_not_ours(key, cert, ca)


def retire_https_pair(folder: Path, db: Path) -> None:
    """With the HTTP listener plain (`http_tls = false`, or tls off), remove the HTTPS key
    and certificate an earlier HTTPS start wrote into `folder` (beside `db`): a private key
    nothing uses is only something to leak (a backup, a copy of the folder). Only the pair
    this manager made (see https_pair_not_ours, and regular files of ours), and only while
    no other manager runs on a database in `folder` (`other_manager`: it may be serving
    them): anything else there is left, and said, for the operator to judge. Never fatal."""
    key_path, cert_path = folder / HTTP_KEY, folder / HTTP_CERT
    present = [p for p in (key_path, cert_path) if p.is_symlink() or p.exists()]
    if not present:
        return
    try:
        why = other_manager(folder, db) or _not_ours(folder, present)
        if why is None:
            for path in present:  # the key first: it is the secret
                path.unlink()
            event(log, "fleet.https_files_removed", files=", ".join(str(p) for p in present),
                  reason="HTTP is plain ([server] tls or http_tls off): the HTTPS key and "
                  "certificate an earlier start made are not used")  # fmt: skip
            return
    except OSError as exc:
        why = f"cannot read or remove them: {exc.strerror or exc}"
    event(log, "fleet.https_files_kept", logging.WARNING,
          files=", ".join(str(p) for p in present),
          reason=f"HTTP is plain but these are beside the database and were left: {why}",
          action="remove them if nothing else uses them")  # fmt: skip
