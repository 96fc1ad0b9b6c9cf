"""How a process proves its role to the bus: nkey or JWT credentials, TLS, its inbox prefix.

:class:`Credentials` are one connection's: the role (it names the inbox prefix and the control
reply subject), an nkey seed file or a JWT ``.creds`` file, and TLS files. A process started by
cilia gets them in its environment (the variables are named after the nats CLI's options), so
``Bus.connect(url, name)`` picks them up unchanged.

:class:`BusAccess` is a cluster's: where every role's credentials are (a directory with one
``<role>.nk`` or ``<role>.creds`` per role, or one file for every role) and the TLS files. It
hands each process started by cilia its role's credentials (:meth:`BusAccess.env`).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from services.common.errors import BusError
from services.common.roles import inbox_prefix, is_valid_role

ROLE_ENV = "CILIA_NATS_ROLE"      # the role this process connects as
NKEY_ENV = "CILIA_NATS_NKEY"      # nats --nkey: a user nkey seed file
CREDS_ENV = "CILIA_NATS_CREDS"    # nats --creds: a JWT .creds file, or a directory per role
CA_ENV = "CILIA_NATS_CA"          # nats --tlsca: the CA that signed the server's certificate
CERT_ENV = "CILIA_NATS_CERT"      # nats --tlscert: a client certificate (mutual TLS)
KEY_ENV = "CILIA_NATS_KEY"        # nats --tlskey: its private key
BUS_ENV_VARS = (ROLE_ENV, NKEY_ENV, CREDS_ENV, CA_ENV, CERT_ENV, KEY_ENV)

NKEY_SUFFIX = ".nk"
CREDS_SUFFIX = ".creds"
JWT_MARKER = "BEGIN NATS USER JWT"   # the first armour line of a .creds file
MAX_CREDS_BYTES = 64 * 1024          # a creds or seed file is a few hundred bytes


@dataclass(frozen=True)
class Credentials:
    """One connection's identity on the bus (all optional: an open bus needs none)."""

    role: str | None = None
    nkey: str | None = None      # nkey seed file
    creds: str | None = None     # JWT .creds file (operator mode)
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        """The credentials the environment names (``CILIA_NATS_*``; empty means unset).

        ``CILIA_NATS_CREDS`` may name a directory of per-role files: the file of
        ``CILIA_NATS_ROLE`` is used.

        Raises:
            BusError: a role or file the variables name is not usable.
        """
        env = os.environ if env is None else env
        role = env.get(ROLE_ENV) or None
        nkey, creds = env.get(NKEY_ENV) or None, env.get(CREDS_ENV) or None
        tls = {"ca": env.get(CA_ENV) or None, "cert": env.get(CERT_ENV) or None,
               "key": env.get(KEY_ENV) or None}
        if role is not None and not is_valid_role(role):
            raise BusError(f"{ROLE_ENV}={role!r} is not a bus role")
        if nkey is not None:
            return cls(role=role, nkey=nkey, **tls)
        if creds is not None:
            return BusAccess(creds=creds, **tls).credentials(role)
        return cls(role=role, **tls)

    @property
    def authenticated(self) -> bool:
        return self.nkey is not None or self.creds is not None

    def env(self) -> dict[str, str]:
        """Environment variables that give a child process these credentials (every variable
        is set, empty when unused, so nothing is inherited from the parent by mistake)."""
        return {ROLE_ENV: self.role or "", NKEY_ENV: self.nkey or "",
                CREDS_ENV: self.creds or "", CA_ENV: self.ca or "", CERT_ENV: self.cert or "",
                KEY_ENV: self.key or ""}

    def ssl_context(self, url: str) -> ssl.SSLContext | None:
        """The client TLS context: verify the server against ``ca`` (the system's CAs without
        one), present ``cert``/``key`` if given. None for a ``nats://`` URL without TLS files:
        nats-py then upgrades with the system's CAs if the server requires TLS.

        Raises:
            BusError: a TLS file cannot be loaded.
        """
        if not (url.startswith("tls://") or self.ca or self.cert):
            return None
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise BusError(f"bus TLS files (CA {self.ca}, certificate {self.cert}): "
                           f"{exc}") from exc
        return ctx

    def connect_options(self, url: str) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (credentials, TLS, inbox prefix)."""
        opts: dict[str, Any] = {"inbox_prefix": inbox_prefix(self.role)}
        tls = self.ssl_context(url)
        if tls is not None:
            opts["tls"] = tls
        if self.nkey:
            _readable(self.nkey, "nkey seed")
            opts["nkeys_seed"] = self.nkey
        elif self.creds:
            _readable(self.creds, "credentials")
            opts["user_credentials"] = self.creds
        return opts

    def describe(self) -> str:
        """One phrase for messages: ``role cli (nkey /var/lib/cilia/bus/creds/cli.nk)``."""
        what = (f"nkey {self.nkey}" if self.nkey else f"creds {self.creds}" if self.creds
                else "no credentials")
        return f"role {self.role or '-'} ({what})"


def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise BusError(f"bus {what} file {path}: {exc.strerror or exc}") from exc


def _is_jwt_creds(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(MAX_CREDS_BYTES)
    except OSError as exc:
        raise BusError(f"bus credentials file {path}: {exc.strerror or exc}") from exc
    return JWT_MARKER.encode() in head


@dataclass(frozen=True)
class BusAccess:
    """Where a cluster's processes find their credentials and the bus's TLS files."""

    creds: str | None = None     # a directory of <role>.nk / <role>.creds, or one file
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.creds is not None

    def credentials(self, role: str | None) -> Credentials:
        """``role``'s credentials.

        Raises:
            BusError: the directory has no file for the role.
        """
        tls = {"ca": self.ca, "cert": self.cert, "key": self.key}
        if self.creds is None:
            return Credentials(role=role, **tls)
        path = Path(self.creds)
        if path.is_dir():
            if role is None:
                raise BusError(f"bus credentials directory {path}: which role? "
                               f"(set {ROLE_ENV})")
            for suffix, kind in ((NKEY_SUFFIX, "nkey"), (CREDS_SUFFIX, "creds")):
                candidate = path / f"{role}{suffix}"
                if candidate.is_file():
                    return Credentials(role=role, **{kind: str(candidate)}, **tls)
            raise BusError(f"no credentials for role {role} in {path} "
                           f"(expected {role}{NKEY_SUFFIX} or {role}{CREDS_SUFFIX})")
        if _is_jwt_creds(path):
            return Credentials(role=role, creds=str(path), **tls)
        return Credentials(role=role, nkey=str(path), **tls)

    def env(self, role: str) -> dict[str, str]:
        """The environment of a process that runs as ``role``."""
        return self.credentials(role).env()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BusAccess | None:
        """The access the environment names (``CILIA_NATS_CREDS`` or ``..._NKEY``, the TLS
        files), or None when it names none."""
        env = os.environ if env is None else env
        values = {"creds": env.get(CREDS_ENV) or env.get(NKEY_ENV) or None,
                  "ca": env.get(CA_ENV) or None, "cert": env.get(CERT_ENV) or None,
                  "key": env.get(KEY_ENV) or None}
        return cls(**values) if any(values.values()) else None

    def to_json(self) -> dict[str, str | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> BusAccess | None:
        if not data:
            return None
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})
