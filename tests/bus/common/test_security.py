"""Who may say what on the bus, enforced by nats-server itself: TLS, one nkey user per role,
subject permissions; control replies that prove their sender's role.

A real nats-server started exactly as ``cilia up`` starts it (no services unless a test starts
one); agent users added the way ``cilia lab up`` adds them (config rewritten, server reloaded).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from services.common.bus import Bus
from services.common.buscreds import BusAccess, Credentials
from services.common.bussecrets import BusSecrets
from services.common.codec import encode
from services.common.contract import (
    HISTORY_STREAM,
    IPCACHE_SOURCE_CIDR,
    KV_IDENTITIES,
    KV_SERVICES,
    STATUS_CONTROL,
    agent_realized_subject,
    ctl_reply_subject,
    flows_subject,
    identity_subject,
    ipcache_subject,
    policy_rules_subject,
    policy_selector_subject,
    source_subject,
)
from services.common.errors import BusError, PermissionDenied
from services.common.roles import (
    ADMIN,
    CLI,
    DNS,
    IDENTITY,
    LB,
    POLICY,
    SOURCE,
    agent_role,
    permissions,
)
from services.common.runner import collect_status
from tests.support.procs import service
from tests.support.securebus import SecuredBus, secured_bus

N1, N2 = "n1", "n2"
A1, A2 = agent_role(N1), agent_role(N2)


@pytest.fixture(scope="module")
def sec() -> Iterator[SecuredBus]:
    with secured_bus(nodes=(N1, N2)) as s:
        yield s


def _node(name: str) -> dict[str, Any]:
    """The Node object an agent registers (what `_register_node` publishes)."""
    obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "spec": {"podCIDR": "10.99.0.0/24"},
           "status": {"addresses": [{"type": "InternalIP", "address": "172.31.9.9"}]}}
    return {"kind": "Node", "namespace": "", "name": name, "object": obj}


async def _try(bus: Bus, subject: str, data: dict[str, Any] | None = None) -> bool:
    """Publish to the history stream: True if stored, False if the server refused it."""
    try:
        await bus.publish(subject, "object.upsert", data or _node("x"),
                          msg_id=f"sec/{uuid.uuid4()}")
    except PermissionDenied:
        return False
    return True


async def _stored(sec: SecuredBus, subject: str) -> bool:
    """Whether the stream holds a message on ``subject`` (read raw: the probe's payload need
    not be a valid event for that subject, only whether the server let it in counts)."""
    reader = await sec.connect(CLI)
    try:
        await reader.js.get_last_msg(HISTORY_STREAM, subject)
    except NotFoundError:
        return False
    finally:
        await reader.close()
    return True


def _rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("cilia_ctl_replies_rejected_total",
                                     {"reason": reason}) or 0.0


# -- who may connect -------------------------------------------------------------------------


async def test_a_client_without_credentials_is_refused(sec: SecuredBus) -> None:
    with pytest.raises(BusError, match=r"refused the credentials.*Authorization Violation"):
        await Bus.connect(sec.url, "anon", creds=Credentials(ca=sec.access.ca))
    # a key the server does not know is refused just the same
    stranger = BusSecrets(sec.state_dir / "elsewhere")
    stranger.ensure([CLI])
    with pytest.raises(BusError, match="refused the credentials"):
        await Bus.connect(sec.url, "stranger", creds=Credentials(
            role=CLI, nkey=str(stranger.seed_file(CLI)), ca=sec.access.ca))


async def test_without_the_ca_a_client_cannot_connect(sec: SecuredBus) -> None:
    admin = sec.creds(ADMIN)
    no_ca = Credentials(role=ADMIN, nkey=admin.nkey)
    with pytest.raises(BusError, match="TLS verification of the server failed"):
        await Bus.connect(sec.url, "no-ca", creds=no_ca)
    # nats:// does not get around it: the server requires TLS, the client upgrades and fails
    plain = sec.url.replace("tls://", "nats://")
    with pytest.raises(BusError, match="TLS verification of the server failed"):
        await Bus.connect(plain, "no-ca", creds=no_ca)
    # another CA (another cluster's bus) is no better
    other = BusSecrets(sec.state_dir / "other-ca")
    other.ensure([ADMIN])
    with pytest.raises(BusError, match="TLS verification of the server failed"):
        await Bus.connect(sec.url, "wrong-ca",
                          creds=Credentials(role=ADMIN, nkey=admin.nkey, ca=str(other.ca)))
    ok = await Bus.connect(sec.url, "with-ca", creds=admin)
    assert ok.security == {"tls": True, "auth": True, "role": ADMIN}
    await ok.close()


def test_the_server_refuses_plaintext(sec: SecuredBus) -> None:
    host, port = sec.url.removeprefix("tls://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        info = json.loads(s.recv(4096).decode().removeprefix("INFO "))
        assert info["tls_required"] is True and info["auth_required"] is True
        s.sendall(b'CONNECT {"verbose":false}\r\nPUB cilia.src.pod.default.x 1\r\nx\r\n'
                  b"PING\r\n")
        answer = b""
        with pytest.raises((ConnectionError, TimeoutError, ssl.SSLError, OSError)):
            while True:   # the server answers with an error, or just hangs up
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed")
                answer += chunk
    assert b"+OK" not in answer and b"PONG" not in answer


# -- who may publish what --------------------------------------------------------------------


def _subjects_owned() -> dict[str, set[str]]:
    """Subject -> the roles (besides admin) that may publish it, as the issue states it."""
    t = uuid.uuid4().hex[:8]
    return {
        source_subject("Pod", "default", f"p{t}"): {SOURCE},
        source_subject("Node", "", N1): {SOURCE, A1},
        source_subject("Node", "", N2): {SOURCE},
        identity_subject(60000 + int(t[:3], 16)): {IDENTITY},
        ipcache_subject(f"10.{int(t[:2], 16)}.0.1/32"): {IDENTITY},
        ipcache_subject(f"192.0.{int(t[:2], 16)}.0/24", IPCACHE_SOURCE_CIDR): {POLICY},
        policy_rules_subject(60000 + int(t[:3], 16)): {POLICY},
        policy_selector_subject(f"s{t}"): {POLICY},
        f"cilia.lb.service.default.s{t}": {LB},
        agent_realized_subject(N1): {A1},
        agent_realized_subject(N2): set(),
        f"cilia.agent.endpoint.{N1}.default.p{t}": {A1},
        f"cilia.agent.endpoint.{N2}.default.p{t}": set(),
    }


async def test_each_role_publishes_only_what_it_owns(sec: SecuredBus) -> None:
    owned = _subjects_owned()
    got: dict[tuple[str, str], bool] = {}
    for role in (SOURCE, IDENTITY, POLICY, LB, A1, DNS, CLI):
        bus = await sec.connect(role)
        try:
            for subject in owned:
                got[(role, subject)] = await _try(bus, subject)
        finally:
            await bus.close()
    assert got == {(role, subject): role in owned[subject] for role, subject in got}
    # what was refused never reached the stream; what was allowed is there
    for subject, roles in owned.items():
        assert await _stored(sec, subject) == bool(roles), subject


async def test_the_cli_role_publishes_no_data(sec: SecuredBus) -> None:
    cli = await sec.connect(CLI)
    try:
        for subject in [*_subjects_owned(), "cilia.src.namespace._.x", "cilia.policy.status.x"]:
            assert not await _try(cli, subject), subject
        # nor on core NATS (flows), which the server refuses the same way
        with cli.refusals.watch([flows_subject(N1)]) as refused:
            await cli.publish_core(flows_subject(N1), "flow", {"node": N1, "flows": []})
            assert await asyncio.wait_for(refused, 5) == flows_subject(N1)
        # ...while reading works: the history, and the status of the bus
        assert await cli.snapshot(["cilia.>"]) is not None
        assert (await cli.js.account_info()).streams >= 1
    finally:
        await cli.close()


async def test_a_forged_node_is_refused_and_an_agents_own_node_accepted(sec: SecuredBus) -> None:
    agent1, lb = await sec.connect(A1), await sec.connect(LB)
    try:
        assert not await _try(agent1, source_subject("Node", "", N2), _node(N2))
        assert not await _try(lb, source_subject("Node", "", "evil"), _node("evil"))
        assert await _try(agent1, source_subject("Node", "", N1), _node(N1))
    finally:
        await agent1.close()
        await lb.close()
    assert await _stored(sec, source_subject("Node", "", N1))
    assert not await _stored(sec, source_subject("Node", "", "evil"))


async def test_only_the_admin_creates_or_changes_streams_and_buckets(sec: SecuredBus) -> None:
    for role in (SOURCE, IDENTITY, POLICY, LB, A1, DNS, CLI):
        bus = await sec.connect(role)
        try:
            with pytest.raises(PermissionDenied):
                await bus.key_value(f"new-{uuid.uuid4().hex[:6]}")
            with pytest.raises(PermissionDenied, match="only the admin role may"):
                await bus.ensure_history(_history())
            for api_call in (lambda b: b.js.delete_stream(HISTORY_STREAM),
                             lambda b: b.js.purge_stream(HISTORY_STREAM)):
                with bus.refusals.watch([f"$JS.API.STREAM.DELETE.{HISTORY_STREAM}",
                                         f"$JS.API.STREAM.PURGE.{HISTORY_STREAM}"]
                                        ) as refused:
                    task = asyncio.ensure_future(api_call(bus))
                    await asyncio.wait_for(refused, 5)
                    task.cancel()
        finally:
            await bus.close()
    # the services' own buckets exist (cilia up made them) and open for their roles
    for role, bucket in ((IDENTITY, KV_IDENTITIES), (LB, KV_SERVICES)):
        bus = await sec.connect(role)
        try:
            kv = await bus.key_value(bucket)
            await kv.put(f"k{uuid.uuid4().hex[:6]}", b"1")
        finally:
            await bus.close()
    # ...and no other role may open them
    lb = await sec.connect(LB)
    try:
        with pytest.raises(PermissionDenied):
            await lb.key_value(KV_IDENTITIES)
    finally:
        await lb.close()
    # a service whose bucket is missing says so and who makes it, instead of making it
    admin, identity = await sec.connect(ADMIN), await sec.connect(IDENTITY)
    try:
        assert (await admin.js.stream_info(HISTORY_STREAM)).state.messages > 0
        await admin.js.delete_key_value(KV_IDENTITIES)
        with pytest.raises(PermissionDenied, match=r"the KV bucket cilia-identities does not "
                           r"exist and role identity .* only the admin role may"):
            await identity.key_value(KV_IDENTITIES)
    finally:
        await admin.key_value(KV_IDENTITIES)
        await admin.close()
        await identity.close()


def _history() -> Any:
    from services.common.bus import HistoryConfig

    return HistoryConfig(max_age_s=60)


async def test_a_role_cannot_read_another_roles_inbox(sec: SecuredBus) -> None:
    cli, identity = await sec.connect(CLI), await sec.connect(IDENTITY)
    seen: list[Msg] = []

    async def keep(msg: Msg) -> None:
        seen.append(msg)

    try:
        theirs = f"_INBOX_{IDENTITY}.>"
        with cli.refusals.watch([theirs]) as refused:
            await cli.nc.subscribe(theirs, cb=keep)
            await cli.nc.flush()
            assert await asyncio.wait_for(refused, 5) == theirs
        await identity.js.stream_info(HISTORY_STREAM)   # a reply to its inbox
        await identity.key_value(KV_IDENTITIES)
        await asyncio.sleep(0.2)
        assert seen == []
    finally:
        await cli.close()
        await identity.close()


# -- control replies prove their sender's role ----------------------------------------------


@pytest.fixture
def fresh() -> Iterator[SecuredBus]:
    """A secured bus of its own: a real service reading this module's test messages (data of
    one type on every subject) would not be what is tested."""
    with secured_bus(nodes=(N1, N2)) as s:
        yield s


async def test_forged_status_replies_are_refused_or_ignored(fresh: SecuredBus,
                                                            tmp_path: Path) -> None:
    sec = fresh
    lb, agent1 = await sec.connect(LB, "forger"), await sec.connect(A1, "forger")
    cli = await sec.connect(CLI)

    def forged(service: str, replica: str, node: str | None = None) -> bytes:
        data: dict[str, Any] = {"service": service, "replica": replica, "pid": 1,
                                "state": "ok", "uptime_s": 1.0, "stats": {}}
        if node:
            data["node"] = node
        return encode("service.status", data)

    async def lb_forges(msg: Msg) -> None:
        nonce = msg.subject.rsplit(".", 1)[1]
        # under the policy role's subject: the server refuses it
        await lb.nc.publish(ctl_reply_subject(POLICY, nonce), forged("policy", "forged-1"))
        # under its own subject, claiming to be policy: delivered, and ignored
        await lb.nc.publish(ctl_reply_subject(LB, nonce), forged("policy", "forged-2"))

    async def agent_forges(msg: Msg) -> None:
        nonce = msg.subject.rsplit(".", 1)[1]
        await agent1.nc.publish(ctl_reply_subject(A2, nonce), forged("nodeagent", "f3", N2))
        await agent1.nc.publish(ctl_reply_subject(A1, nonce), forged("nodeagent", "f4", N2))
        await agent1.nc.publish(ctl_reply_subject(A1, nonce), forged("identity", "f5"))

    try:
        await lb.nc.subscribe(STATUS_CONTROL.subject("*"), cb=lb_forges)
        await agent1.nc.subscribe(STATUS_CONTROL.subject("*"), cb=agent_forges)
        await lb.nc.flush()
        await agent1.nc.flush()
        mismatches = _rejected("role mismatch")
        with service("services.policy", sec.url, "--replica", "policy-real",
                     env=sec.env(POLICY), log=tmp_path / "policy.log"):
            replies: list[dict[str, Any]] = []

            async def real_policy_answers() -> bool:
                replies[:] = await collect_status(cli)
                return any(r["replica"] == "policy-real" and r["state"] == "ok"
                           for r in replies)

            deadline = asyncio.get_running_loop().time() + 30
            while not await real_policy_answers():
                assert asyncio.get_running_loop().time() < deadline, replies
        assert [(r["service"], r["replica"]) for r in replies] == [("policy", "policy-real")]
        assert lb.refusals.count >= 1 and agent1.refusals.count >= 1   # foreign role subjects
        assert _rejected("role mismatch") >= mismatches + 3             # f2, f4, f5 each time
    finally:
        for bus in (lb, agent1, cli):
            await bus.close()


async def test_a_stored_message_pointed_at_a_reply_subject_is_not_a_reply(
        sec: SecuredBus) -> None:
    """An agent may create consumers: one that delivers a stored, forged heartbeat to the reply
    subject of a request must not pass for an answer (the server does not deliver to the
    requester's wildcard subscription; were it to, the message would carry a JetStream reply
    subject and be dropped)."""
    agent1, cli = await sec.connect(A1, "forger"), await sec.connect(CLI)
    forged_subject = f"cilia.agent.forged.{N1}"
    await agent1.js.publish(forged_subject, encode("service.status", {
        "service": "policy", "replica": "stored", "pid": 1, "state": "ok", "uptime_s": 1.0,
        "stats": {}}), stream=HISTORY_STREAM)
    pointed: list[str] = []

    async def point_consumer(msg: Msg) -> None:
        nonce = msg.subject.rsplit(".", 1)[1]
        info = await agent1.js.add_consumer(HISTORY_STREAM, api.ConsumerConfig(
            deliver_subject=ctl_reply_subject(POLICY, nonce), filter_subject=forged_subject,
            ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.LAST))
        pointed.append(info.name)

    try:
        await agent1.nc.subscribe(STATUS_CONTROL.subject("*"), cb=point_consumer)
        await agent1.nc.flush()
        # long enough for the consumer to be made while replies still count, on a busy machine
        replies = await collect_status(cli, wait=3.0)
        assert pointed                       # the consumer was made while replies came in
        assert not [r for r in replies if r["replica"] == "stored"]
    finally:
        await agent1.close()
        await cli.close()


async def test_a_reply_with_a_reply_subject_is_not_an_answer(sec: SecuredBus) -> None:
    """What a consumer delivers carries a reply subject; responders publish none. (The server
    already refuses a JetStream ack subject as anyone's reply; the admin, with a reply of its
    own, stands in for a consumer's delivery here.)"""
    policy, admin = await sec.connect(POLICY, "responder"), await sec.connect(ADMIN, "stand-in")
    cli = await sec.connect(CLI)
    ack = "$JS.ACK.CILIA.x.1.1.1.1.0"

    def body(replica: str) -> bytes:
        return encode("service.status", {"service": "policy", "replica": replica, "pid": 1,
                                         "state": "ok", "uptime_s": 1.0, "stats": {}})

    async def answer(msg: Msg) -> None:
        # all three at once: the server's refusal of the first may come after the status
        # window, and the answer must not wait for it
        nonce = msg.subject.rsplit(".", 1)[1]
        await policy.nc.publish(ctl_reply_subject(POLICY, nonce), body("p1"), reply=ack)
        await admin.nc.publish(ctl_reply_subject(POLICY, nonce), body("with-reply"),
                               reply=f"_INBOX_{ADMIN}.stand-in")
        await policy.nc.publish(ctl_reply_subject(POLICY, nonce), body("plain-reply"))

    try:
        await policy.nc.subscribe(STATUS_CONTROL.subject("*"), cb=answer)
        await policy.nc.flush()
        before = _rejected("not a reply")
        with policy.refusals.watch([ack]) as refused:
            replies = await collect_status(cli, wait=1.0)
            assert await asyncio.wait_for(refused, 5) == ack     # the server refused it
        assert [r["replica"] for r in replies] == ["plain-reply"]
        assert _rejected("not a reply") == before + 1
    finally:
        for bus in (policy, admin, cli):
            await bus.close()


# -- credentials on disk -----------------------------------------------------------------------


def test_credentials_are_root_only_and_reused(tmp_path: Path) -> None:
    secrets = BusSecrets(tmp_path / "bus")
    secrets.ensure()
    files = [p for p in secrets.root.rglob("*") if p.is_file()]
    dirs = [secrets.root, *[p for p in secrets.root.rglob("*") if p.is_dir()]]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}
    assert {oct(p.stat().st_mode & 0o777) for p in dirs} == {"0o700"}
    before = {p: p.read_bytes() for p in files}
    assert secrets.ensure() is False                   # nothing new
    assert {p: p.read_bytes() for p in files} == before
    assert secrets.ensure([agent_role("node-1")]) is True
    config = secrets.config.read_text()
    assert secrets.public_key(agent_role("node-1")) in config
    assert {p: p.read_bytes() for p in files if p != secrets.config} == \
        {p: b for p, b in before.items() if p != secrets.config}


def test_a_role_env_names_only_that_roles_file(tmp_path: Path) -> None:
    secrets = BusSecrets(tmp_path / "bus")
    secrets.ensure()
    access = secrets.access()
    env = access.env(POLICY)
    assert env["CILIA_NATS_ROLE"] == POLICY
    assert env["CILIA_NATS_NKEY"] == str(secrets.seed_file(POLICY))
    assert env["CILIA_NATS_CREDS"] == ""                # nothing inherited by mistake
    assert Credentials.from_env(env) == access.credentials(POLICY)
    # a directory in CILIA_NATS_CREDS: the role's own file
    assert Credentials.from_env({"CILIA_NATS_ROLE": LB, "CILIA_NATS_CREDS": str(
        secrets.creds_dir)}).nkey == str(secrets.seed_file(LB))
    with pytest.raises(BusError, match=r"no credentials for role agent-x in .*agent-x\.nk"):
        access.credentials(agent_role("x"))
    assert BusAccess.from_json(access.to_json()) == access


def test_permissions_follow_the_issue() -> None:
    cli = permissions(CLI)
    assert not [s for s in cli.publish if s.startswith("cilia.") and not s.startswith(
        "cilia.ctl.")]
    assert f"_INBOX_{CLI}.>" in cli.subscribe and "_INBOX.>" not in cli.subscribe
    agent = permissions(A1)
    assert {s for s in agent.publish if s.startswith("cilia.") and "ctl" not in s} == {
        f"cilia.agent.*.{N1}", f"cilia.agent.*.{N1}.>", f"cilia.flows.{N1}",
        f"cilia.src.node._.{N1}"}
    # only the admin changes streams and buckets, or reaches the JetStream API as a whole
    for role in (SOURCE, IDENTITY, POLICY, LB, A1, DNS, CLI):
        for s in permissions(role).publish:
            assert not re.search(r"STREAM\.(CREATE|UPDATE|DELETE|PURGE)|CONSUMER\.DELETE", s)
            assert s not in (">", "$JS.API.>", "$JS.>", "cilia.>"), (role, s)


# -- mutual TLS with an external server ---------------------------------------------------------


def _client_cert(secrets: BusSecrets, out: Path) -> tuple[Path, Path]:
    """A client certificate signed by the bus's CA (what an operator would issue)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate(secrets.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(secrets.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cilia client")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = out / "client.pem", out / "client-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_mutual_tls_with_a_client_certificate(tmp_path: Path) -> None:
    """An operator's NATS that verifies clients: --tlscert/--tlskey (CILIA_NATS_CERT/KEY)."""
    from services.common.embedded import start_nats

    secrets = BusSecrets(tmp_path / "bus")
    secrets.ensure([CLI])
    config = json.loads(secrets.config.read_text().split("\n", 1)[1])
    config["tls"].update(ca_file=str(secrets.ca), verify=True)   # clients must present a cert
    conf = tmp_path / "mtls.conf"
    conf.write_text(json.dumps(config))
    cert, key = _client_cert(secrets, tmp_path)
    server = start_nats(tmp_path / "store", config=conf, tls=True)
    try:
        creds = secrets.access().credentials(CLI)
        with pytest.raises(BusError, match="cannot connect"):
            await Bus.connect(server.url, "no-cert", creds=creds)
        env = {"CILIA_NATS_ROLE": CLI, "CILIA_NATS_NKEY": str(creds.nkey),
               "CILIA_NATS_CA": str(secrets.ca), "CILIA_NATS_CERT": str(cert),
               "CILIA_NATS_KEY": str(key)}
        bus = await Bus.connect(server.url, "with-cert", creds=Credentials.from_env(env))
        assert bus.security == {"tls": True, "auth": True, "role": CLI}
        await bus.close()
    finally:
        server.stop()
