"""The embedded bus's secrets: a CA, the server's certificate, one nkey user per role, and the
nats-server configuration that gives each user its role's permissions.

Everything lives in one directory (``$CILIA_STATE_DIR/bus``), readable by root only (the
directories 0700, the files 0600), and is reused when it exists, so ``cilia up``/``down``/``up``
keeps every credential a process or an operator already holds::

    bus/tls/ca.pem, ca-key.pem         the CA clients verify the server against
    bus/tls/server.pem, server-key.pem the server's certificate (127.0.0.1, localhost)
    bus/creds/<role>.nk                one nkey seed per role (nats --nkey)
    bus/nats.conf                      TLS and the users' permissions (rewritten, then reloaded)

The checks themselves are the server's: nkey signature authentication, subject permissions and
TLS. Nothing here inspects a message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.buscreds import NKEY_SUFFIX, BusAccess
from services.common.errors import BusError
from services.common.roles import CONTROL_PLANE_ROLES, is_valid_role, permissions

BUS_DIR = "bus"
LOCK_FILE = ".lock"
DIR_MODE = 0o700                   # root only
FILE_MODE = 0o600                  # root only
SEED_BYTES = 32                    # an ed25519 seed
CA_VALID_DAYS = 3650               # the CA outlives many server certificates
SERVER_VALID_DAYS = 825            # the longest validity TLS clients commonly accept
RENEW_BEFORE_DAYS = 30             # a server certificate this close to expiry is replaced
TLS_TIMEOUT_S = 2.0                # nats-server's TLS handshake timeout
AUTH_TIMEOUT_S = 2.0               # nats-server's time for a client to authenticate
SERVER_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")   # where the embedded bus listens
CA_NAME = "cilia bus CA"
SERVER_NAME = "cilia nats-server"


@dataclass(frozen=True)
class BusSecrets:
    """The files of one embedded bus (see the module docstring)."""

    root: Path

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def creds_dir(self) -> Path:
        return self.root / "creds"

    @property
    def ca(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.tls_dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.tls_dir / "server-key.pem"

    @property
    def config(self) -> Path:
        return self.root / "nats.conf"

    def seed_file(self, role: str) -> Path:
        return self.creds_dir / f"{role}{NKEY_SUFFIX}"

    def access(self) -> BusAccess:
        """How clients of this bus connect: the per-role seed files and the CA."""
        return BusAccess(creds=str(self.creds_dir), ca=str(self.ca))

    def roles(self) -> list[str]:
        """Roles that have a seed file, sorted."""
        if not self.creds_dir.is_dir():
            return []
        return sorted(p.name[:-len(NKEY_SUFFIX)] for p in self.creds_dir.glob(f"*{NKEY_SUFFIX}")
                      if is_valid_role(p.name[:-len(NKEY_SUFFIX)]))

    def ensure(self, roles: Iterable[str] = CONTROL_PLANE_ROLES) -> bool:
        """Create what is missing (directories, CA, server certificate, a seed per role) and
        write the server configuration; returns whether a user was added.

        Raises:
            BusError: a role name is invalid or a file cannot be written.
        """
        try:
            for d in (self.root, self.tls_dir, self.creds_dir):
                d.mkdir(parents=True, exist_ok=True)
                os.chmod(d, DIR_MODE)        # also when it existed with looser bits
            with self._locked():
                return self._ensure(roles)
        except OSError as exc:
            raise BusError(f"bus credentials in {self.root}: {exc}") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (two `cilia lab up` at once must not lose a user)."""
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _ensure(self, roles: Iterable[str]) -> bool:
        ca_cert, ca_key = self._ensure_ca()
        self._ensure_server_cert(ca_cert, ca_key)
        added = False
        for role in roles:
            if not is_valid_role(role):
                raise BusError(f"cannot make bus credentials: {role!r} is not a role")
            if not self.seed_file(role).exists():
                _write_private(self.seed_file(role), _new_user_seed())
                added = True
        self.write_config()
        return added

    def public_key(self, role: str) -> str:
        """The public nkey (``U...``) of a role's seed."""
        try:
            seed = bytearray(self.seed_file(role).read_bytes().strip())
            return str(nkeys.from_seed(seed).public_key.decode())
        except (OSError, nkeys.NkeysError) as exc:
            raise BusError(f"bus credentials of role {role}: {self.seed_file(role)}: "
                           f"{exc}") from exc

    def write_config(self) -> Path:
        """Render the server's TLS and authorization settings from the seeds present."""
        text = render_config(self.server_cert, self.server_key,
                             [(role, self.public_key(role)) for role in self.roles()])
        _write_private(self.config, text.encode())
        return self.config

    def _ensure_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self.ca.exists() and self.ca_key.exists():
            cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
            key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
            if isinstance(key, ec.EllipticCurvePrivateKey) and _valid_for(cert, 0):
                return cert, key
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        _write_private(self.ca_key, _key_pem(key))
        _write_private(self.ca, cert.public_bytes(serialization.Encoding.PEM))
        self.server_cert.unlink(missing_ok=True)   # signed by the CA that is gone
        return cert, key

    def _ensure_server_cert(self, ca_cert: x509.Certificate,
                            ca_key: ec.EllipticCurvePrivateKey) -> None:
        if self.server_cert.exists() and self.server_key.exists():
            cert = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
            if (cert.issuer == ca_cert.subject and _valid_for(cert, RENEW_BEFORE_DAYS)
                    and _hosts(cert) == set(SERVER_HOSTS)):
                with contextlib.suppress(Exception):
                    cert.verify_directly_issued_by(ca_cert)
                    return
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        names: list[x509.GeneralName] = []
        for host in SERVER_HOSTS:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(now + dt.timedelta(days=SERVER_VALID_DAYS))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write_private(self.server_key, _key_pem(key))
        _write_private(self.server_cert, cert.public_bytes(serialization.Encoding.PEM))


def render_config(cert: Path, key: Path, users: Sequence[tuple[str, str]]) -> str:
    """The nats-server configuration: TLS required, one nkey user per (role, public key).

    JSON is valid nats-server configuration syntax and quotes every path and subject safely.
    """
    body = {
        "tls": {"cert_file": str(cert), "key_file": str(key), "timeout": TLS_TIMEOUT_S},
        "authorization": {
            "timeout": AUTH_TIMEOUT_S,
            "users": [{"nkey": public, "permissions": permissions(role).to_config()}
                      for role, public in users],
        },
    }
    roles = ", ".join(role for role, _ in users)
    return (f"# Written by cilia (cilia up, cilia lab up); roles: {roles}\n"
            + json.dumps(body, indent=2) + "\n")


def _new_user_seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(SEED_BYTES), nkeys.PREFIX_BYTE_USER)) + b"\n"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` atomically, created 0600 (never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _valid_for(cert: x509.Certificate, days: int) -> bool:
    return cert.not_valid_after_utc > _now() + dt.timedelta(days=days)


def _hosts(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return ({str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
            | set(san.get_values_for_type(x509.DNSName)))


def bus_secrets(state_dir: Path) -> BusSecrets:
    """The embedded bus's secrets under a state directory."""
    return BusSecrets(state_dir / BUS_DIR)
