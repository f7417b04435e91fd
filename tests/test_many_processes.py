"""Several ``lineage serve`` processes on one SQLite file, under concurrent load.

The tests drive real ``lineage serve`` processes (uvicorn, 127.0.0.1, a port each) on
one database and one key directory, drives them at once from many threads, and then
reads the database itself:

1. appends and decisions spread over three processes make one log: leaves 0..n-1,
   no entry twice, every acknowledged (id, index) where it was acknowledged, and
   ``lineage verify --db`` passes;
2. ``max_uses: N`` is exact across processes: many more than N concurrent uses of one
   subtree give exactly N allows;
3. a revocation acknowledged by one process binds the others at once, and the log
   orders every decision on the right side of it;
4. a DPoP nonce issued by any process is accepted by every other, and a proof used at
   one is a replay at all (with ``public_url``, as behind a load balancer);
5. ``lineage key rotate decision|operator`` while two processes serve under load: both
   go on deciding and revoking, with the new keys, without a restart
   (``tests/test_rotation_live.py`` covers one idle in-thread server);
6. a revocation in flight while the operator key is retired is still acknowledged.

Every test but 5 runs on one shared three-process ledger (``trio``) and counts from where
it starts; 5 has two processes of its own. Every process is configured as behind one
address: ``public_url`` set, DPoP nonces required (so every token exchange in the file also
crosses processes with its nonce).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from lineage.client import Agent, LineageClient
from lineage.client.dpop import make_proof
from lineage.ledger.audit import audit
from lineage.ledger.issuance import bind_principal
from lineage.ledger.keys import KeyRing
from lineage.ledger.ledger import init_ledger, open_ledger
from lineage.ledger.rotation import rotate_key
from lineage.ledger.store import StoredLeaf
from lineage.ledger.tokens import TokenStore
from lineage.verifier.entry import Entry, parse_entry
from lineage.verifier.keys import SigningKey
from lineage.verifier.kinds import Access, KeyChange, Revocation
from lineage.verifier.note import Verifier
from tests.api_server import (
    ORIGIN,
    OffsetClock,
    Server,
    checkpoint_at_least,
    free_port,
    key,
    read_scope,
    wait_until_serving,
)

LINEAGE = Path(sys.executable).with_name("lineage")
PUBLIC_URL = "http://lineage.test"  # what clients see when the processes sit behind one address


# -- a cluster of `lineage serve` processes on one database ------------------------------------


@dataclass
class Cluster:
    """Processes serving one ledger; ``servers[i]`` talks to process i (tests/api_server.py)."""

    tmp: Path
    log_key: Verifier
    servers: list[Server] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)  # every one started
    serving: list[subprocess.Popen] = field(default_factory=list)  # behind ``servers``
    outputs: list[Path] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.tmp / "lineage.db"

    @property
    def keys(self) -> Path:
        return self.tmp / "lineage-keys"

    def output(self) -> str:
        """The tail of every process's log, for failure messages."""
        return "\n".join(
            f"--- process {i}\n{p.read_text()[-3000:]}" for i, p in enumerate(self.outputs)
        )

    def leaves(self) -> list[StoredLeaf]:
        """Every leaf as stored, read from the database file (not through any server)."""
        log = open_ledger(self.db, log_key=self.log_key.vkey)
        try:
            return list(log.store.leaves(0, log.size))
        finally:
            log.close()
            log.store.close()


def _env() -> dict[str, str]:
    """The processes' settings: as deployed behind one address (``public_url``), with DPoP
    nonces required, checkpoints every 0.2 s; no other ``LINEAGE_*`` from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    return {
        **env,
        "LINEAGE_PUBLIC_URL": PUBLIC_URL,
        "LINEAGE_DPOP_NONCE_REQUIRED": "true",
        "LINEAGE_CHECKPOINT_INTERVAL": "0.2",
    }


def _start(cluster: Cluster, i: int, env: dict[str, str]) -> tuple[int, Path, subprocess.Popen]:
    """Start process ``i`` on a free port (another if that one was taken meanwhile); its
    port and the file its output goes to. Every process started is in ``cluster.procs``."""
    out = cluster.tmp / f"serve-{i}.log"
    for _attempt in range(3):
        port = free_port()
        where = ["--host", "127.0.0.1", "--port", str(port)]
        with out.open("ab") as sink:
            proc = subprocess.Popen(
                [LINEAGE, "serve", "--db", cluster.db, "--keys", cluster.keys, *where],
                cwd=cluster.tmp,  # no stray lineage.toml
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        cluster.procs.append(proc)
        try:
            wait_until_serving(f"http://127.0.0.1:{port}", proc, timeout=30)
        except RuntimeError:
            if proc.poll() is not None and "address already in use" in out.read_text():
                continue
            raise RuntimeError(f"process {i} did not start:\n{out.read_text()}") from None
        return port, out, proc
    raise RuntimeError(f"process {i}: no free port")


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


@contextmanager
def serving(tmp_path: Path, n: int) -> Iterator[Cluster]:
    """A fresh ledger (alice bound, one token per role) served by ``n`` ``lineage serve``
    processes at once (settings: ``_env``). Every process is stopped on exit."""
    log = init_ledger(tmp_path / "lineage.db", tmp_path / "lineage-keys", origin=ORIGIN)
    try:
        log.append(
            bind_principal(ORIGIN, log.keys.operator, "alice@corp", key("alice@corp").public)
        )
        log.checkpoint()
        tokens = TokenStore(log.store)
        secret = {r: tokens.create(r, f"{r}-1")[1] for r in ("operator", "auditor", "enforcement")}
    finally:
        log.close()
        log.store.close()
    cluster = Cluster(tmp_path, log.log_key)
    try:
        with ThreadPoolExecutor(n) as pool:  # start them together: it takes a second each
            started = list(pool.map(lambda i: _start(cluster, i, _env()), range(n)))
        for port, out, proc in started:
            cluster.outputs.append(out)
            cluster.serving.append(proc)
            cluster.servers.append(
                Server(
                    f"http://127.0.0.1:{port}",
                    log,  # closed: the servers own the ledger; Server only needs its builders
                    OffsetClock(),
                    secret["operator"],
                    secret["auditor"],
                    secret["enforcement"],
                )
            )
        yield cluster
        for i, proc in enumerate(cluster.serving):
            assert proc.poll() is None, f"process {i} died:\n{cluster.output()}"
    finally:
        _stop(cluster.procs)


# -- what the tests send -----------------------------------------------------------------------


def post_entry(srv: Server, entry: Entry) -> httpx.Response:
    """POST /v1/entries: anyone may append a self-authenticating signed entry."""
    return httpx.post(
        srv.url("/v1/entries"),
        content=entry.raw,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def revoke(srv: Server, handle: str, bearer: str) -> httpx.Response:
    return httpx.post(
        srv.url("/oauth/revoke"), data={"token": handle}, headers=srv.bearer(bearer), timeout=30
    )


def introspect(srv: Server, handle: str) -> dict[str, Any]:
    r = httpx.post(
        srv.url("/oauth/introspect"),
        data={"token": handle},
        headers=srv.bearer(srv.enforcement),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


LATEST_NONCE: list[str | None] = [None]  # the last DPoP-Nonce any process sent


def issue(srv: Server, entry: Entry, holder: SigningKey) -> int:
    """Exchange ``entry`` at ``srv``, proving ``holder``'s key (DPoP) with the last nonce
    any process sent (on a ``use_dpop_nonce`` challenge, once more with the new one, as
    ``lineage.client`` does); the entry's index."""
    for _ in range(2):
        proof = make_proof(holder.seed, "POST", PUBLIC_URL + "/oauth/token", nonce=LATEST_NONCE[0])
        r = httpx.post(
            srv.url("/oauth/token"),
            data=srv.exchange_form(entry),
            headers={"DPoP": proof},
            timeout=30,
        )
        if r.status_code != 400 or r.json()["error"] != "use_dpop_nonce":
            break
        LATEST_NONCE[0] = r.headers["DPoP-Nonce"]
    assert r.status_code == 200, r.text
    assert r.json()["access_token"] == entry.id
    return r.json()["lineage_index"]


def decide(srv: Server, holder: SigningKey, handle: str) -> dict[str, Any]:
    """One decision at ``srv``: {decision, reason, id, index, ...}; asserts a 200."""
    r = srv.access(srv.invoke(holder, handle))
    assert r.status_code == 200, r.text
    return r.json()


def rotate(cluster: Cluster, role: str) -> None:
    done = subprocess.run(
        [LINEAGE, "key", "rotate", role, "--db", cluster.db, "--keys", cluster.keys],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cluster.tmp,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr


def leaf_entry(leaf: StoredLeaf) -> Entry:
    return parse_entry(leaf.entry)


@dataclass
class Load:
    """Requests sent over and over from background threads until ``stop``, ``pause``
    seconds apart (a steady load that leaves the CPUs to the servers and to the test);
    each result with the monotonic time just before it was sent."""

    pause: float = 0.02
    results: list[tuple[float, str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, name: str, step: Callable[[], Any]) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    outcome = step()
                except Exception as exc:  # recorded; the test fails on it
                    with self._lock:
                        self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                else:
                    with self._lock:
                        self.results.append((sent, name, outcome))
                self._stop.wait(self.pause)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self._threads)

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()  # whatever happened in the block: no thread outlives it

    def count(self, name: str | None = None) -> int:
        return sum(1 for _, n, _ in self.results if name is None or n == name)

    def until(self, total: int, timeout: float = 30.0) -> None:
        """Wait until ``total`` requests have been answered, all told."""
        deadline = time.monotonic() + timeout
        while self.count() < total:
            assert time.monotonic() < deadline, f"the load stalled: {self.errors[:3]}"
            time.sleep(0.01)


# -- all but test 5 share three processes on one ledger; each counts from where it starts ------


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with serving(tmp_path_factory.mktemp("trio"), 3) as cluster:
        yield cluster


def size_everywhere(cluster: Cluster) -> int:
    """The tree size, the same at every process."""
    sizes = {srv.size() for srv in cluster.servers}
    assert len(sizes) == 1, sizes
    return sizes.pop()


# -- 1. one log, whoever appends ---------------------------------------------------------------

GRANTS, DELEGATIONS, DECISIONS, TWINS = 30, 30, 45, 6


@pytest.mark.slow
def test_appends_and_decisions_through_three_processes_make_one_contiguous_log(trio: Cluster):
    """Grants (token exchange), delegations (``POST /v1/entries``), decisions and the same
    entry sent to all three processes at once, from 12 threads in a shuffled order."""
    servers = trio.servers
    a = servers[0]
    start = size_everywhere(trio)
    base = a.grant(max_uses=None)  # the agent's: delegations and decisions hang off it
    assert issue(a, base, a.agent) == start

    def grant(i: int) -> list[tuple[str, int, int]]:
        srv, holder = servers[i % 3], key(f"holder-{i}")
        entry = srv.grant(holder, max_uses=None)
        return [(entry.id, issue(srv, entry, holder), 200)]

    def delegation(i: int) -> list[tuple[str, int, int]]:
        srv = servers[(i + 1) % 3]
        entry = srv.delegation(base.id, srv.agent, key(f"reader-{i}"))
        r = post_entry(srv, entry)
        assert r.status_code == 201, r.text
        assert r.json()["id"] == entry.id
        return [(entry.id, r.json()["index"], 201)]

    def access(i: int) -> list[tuple[str, int, int]]:
        srv = servers[(i + 2) % 3]
        answer = decide(srv, srv.agent, base.id)
        assert answer["decision"] == "allow", answer
        return [(answer["id"], answer["index"], 200)]

    def twin(i: int) -> list[tuple[str, int, int]]:
        """One entry, sent to all three processes at the same moment: appended once."""
        entry = a.delegation(base.id, a.agent, key(f"twin-{i}"))
        ready = threading.Barrier(3)

        def send(srv: Server) -> tuple[str, int, int]:
            ready.wait(10)
            r = post_entry(srv, entry)
            assert r.status_code in (200, 201), r.text
            return r.json()["id"], r.json()["index"], r.status_code

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(send, servers))
        assert sorted(status for _, _, status in answers) == [200, 200, 201], answers
        assert {(got, at) for got, at, _ in answers} == {(entry.id, answers[0][1])}, answers
        return answers

    jobs = (
        [(grant, i) for i in range(GRANTS)]
        + [(delegation, i) for i in range(DELEGATIONS)]
        + [(access, i) for i in range(DECISIONS)]
        + [(twin, i) for i in range(TWINS)]
    )
    random.Random(7).shuffle(jobs)
    with ThreadPoolExecutor(12) as pool:
        acks = list(
            itertools.chain.from_iterable(
                pool.map(lambda job: job[0](job[1]), jobs)  # re-raises any failure
            )
        )

    size = start + 1 + GRANTS + DELEGATIONS + DECISIONS + TWINS
    assert size_everywhere(trio) == size  # every process sees the whole log, at once
    published = {
        (cp.size, cp.root_hash)
        for cp in (checkpoint_at_least(srv, size).checkpoint for srv in servers)
    }
    assert len(published) == 1  # one tree, whichever process is asked
    assert next(iter(published))[0] == size

    leaves = trio.leaves()
    assert [leaf.index for leaf in leaves] == list(range(size))  # contiguous from 0
    assert len({leaf.entry_id for leaf in leaves}) == size  # no entry twice
    acknowledged: dict[int, str] = {}
    for entry_id, index, _ in acks:
        assert acknowledged.setdefault(index, entry_id) == entry_id, f"index {index} twice"
        assert leaves[index].entry_id == entry_id, f"{entry_id} acknowledged at {index}"
    # every leaf after the base grant is one that a client was told about, and no other
    assert sorted(acknowledged) == list(range(start + 1, size))
    kinds = Counter(leaf.kind for leaf in leaves[start + 1 :])
    assert kinds == {"grant": GRANTS, "delegation": DELEGATIONS + TWINS, "access": DECISIONS}

    done = subprocess.run(
        [LINEAGE, "verify", "--db", trio.db, "--keys", trio.keys, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=trio.tmp,
        env=_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert (report["size"], bytes.fromhex(report["root"])) == next(iter(published))
    everything = Counter(leaf.kind for leaf in leaves)
    assert report["accesses"] == everything["access"]
    assert report["credentials"] == everything["grant"] + everything["delegation"]


# -- 2. max_uses across processes --------------------------------------------------------------

MAX_USES, ATTEMPTS = 5, 45


def test_max_uses_is_exact_across_processes(trio: Cluster):
    """Three holders of one ``max_uses: 5`` subtree (the grant's agent and two delegates),
    45 uses released together, through each of three processes: exactly 5 allows."""
    servers = trio.servers
    a = servers[0]
    grant = a.grant(key("budget-agent"), max_uses=MAX_USES)
    issue(a, grant, key("budget-agent"))
    users = [(key("budget-agent"), grant.id)]
    for n, srv in enumerate(servers[1:], 1):
        reader = key(f"budget-reader-{n}")
        child = srv.delegation(grant.id, key("budget-agent"), reader, max_uses=MAX_USES)
        issue(srv, child, reader)
        users.append((reader, child.id))
    start = size_everywhere(trio)
    go = threading.Barrier(ATTEMPTS)

    def attempt(i: int) -> dict[str, Any]:
        (holder, handle), srv = users[i % 3], servers[i // 3 % 3]  # every pair, evenly
        invocation = srv.invoke(holder, handle)
        go.wait(30)
        r = srv.access(invocation)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(ATTEMPTS) as pool:
        answers = list(pool.map(attempt, range(ATTEMPTS)))

    allowed = [x for x in answers if x["decision"] == "allow"]
    denied = [x for x in answers if x["decision"] == "deny"]
    assert len(allowed) == MAX_USES, allowed
    assert len(denied) == ATTEMPTS - MAX_USES
    assert all(x["reason"].startswith("budget:") for x in denied), denied
    assert sorted(x["index"] for x in answers) == list(range(start, start + ATTEMPTS))
    # the allows are the first five uses in the log's order, whichever process decided them
    assert sorted(x["index"] for x in allowed) == list(range(start, start + MAX_USES))
    for srv in servers:  # spent, as every process sees it
        for _, handle in users:
            status = introspect(srv, handle)
            assert status["active"] is False
            assert status["lineage"]["status"] == "spent"
            assert status["lineage"]["credential"] == grant.id

    logged = [leaf_entry(leaf) for leaf in trio.leaves()[start:]]
    assert all(isinstance(e.body, Access) for e in logged)
    assert len(logged) == ATTEMPTS
    assert Counter(e.body.decision for e in logged) == {
        "allow": MAX_USES,
        "deny": ATTEMPTS - MAX_USES,
    }
    audit(trio.db, trio.log_key)  # the replay agrees: no sixth use slipped through


# -- 3. a revocation binds every process -------------------------------------------------------


@pytest.mark.slow
def test_a_revocation_acknowledged_by_one_process_binds_the_others_at_once(trio: Cluster):
    """Per round: a grant and its delegate, in use at two processes from background threads;
    the third revokes the grant. From the moment it answers, the other two deny both, and
    in the log every allow precedes the revocation and every deny follows it."""
    servers = trio.servers
    rounds: list[tuple[str, list[dict[str, Any]], Load]] = []
    for r in range(3):
        a, b, c = servers[r], servers[(r + 1) % 3], servers[(r + 2) % 3]
        agent, reader = key(f"revoked-agent-{r}"), key(f"revoked-reader-{r}")
        grant = a.grant(agent, max_uses=None)
        issue(b, grant, agent)
        child = a.delegation(grant.id, agent, reader)
        issue(c, child, reader)
        users = [(agent, grant.id), (reader, child.id)]
        for srv, (holder, handle) in itertools.product((b, c), users):
            assert decide(srv, holder, handle)["decision"] == "allow"  # known everywhere

        with Load() as load:
            for srv, (holder, handle) in itertools.product((b, c), users):
                load.run(handle, lambda srv=srv, h=holder, cred=handle: decide(srv, h, cred))
            load.until(8)  # in full swing
            answer = revoke(a, grant.id, a.operator if r % 2 else a.enforcement)
            acknowledged = time.monotonic()
            assert answer.status_code == 200, answer.text
            after = [decide(srv, h, cred) for srv, (h, cred) in itertools.product((b, c), users)]
            for status in (introspect(srv, cred) for srv in (b, c) for _, cred in users):
                assert status["active"] is False
                assert status["lineage"]["status"] == "revoked"
        assert not load.errors, load.errors
        for x in after:
            assert (x["decision"], x["reason"].split(":")[0]) == ("deny", "revoked"), x
        late = [x for sent, _, x in load.results if sent > acknowledged]
        assert all(x["decision"] == "deny" for x in late), [
            x for x in late if x["decision"] != "deny"
        ]
        rounds.append((grant.id, after, load))

    leaves = trio.leaves()
    for grant_id, after, load in rounds:
        revoked_at = [
            leaf.index
            for leaf in leaves
            if leaf.kind == "revocation" and leaf_entry(leaf).body.credential == grant_id
        ]
        assert len(revoked_at) == 1
        for x in after + [x for _, _, x in load.results]:
            if x["decision"] == "allow":
                assert x["index"] < revoked_at[0], x
            else:
                assert x["index"] > revoked_at[0] and x["reason"].startswith("revoked"), x
        assert any(x["decision"] == "allow" for _, _, x in load.results)  # the race was run
    audit(trio.db, trio.log_key)


# -- 4. DPoP nonces ----------------------------------------------------------------------------


class RoundRobin(httpx.BaseTransport):
    """A load balancer in the client: each request goes to the next process in turn."""

    def __init__(self, servers: Sequence[Server]):
        self.ports = [httpx.URL(s.base).port for s in servers]
        self.inner = httpx.HTTPTransport()
        self.turn = 0
        self.sent: list[tuple[int, str, int, str | None]] = []  # port, path, status, error

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        port = self.ports[self.turn % len(self.ports)]
        self.turn += 1
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
        response = self.inner.handle_request(request)
        response.read()
        error = None
        if response.status_code >= 400:
            try:
                error = json.loads(response.content).get("error")
            except ValueError:
                error = response.text[:200]
        self.sent.append((port, request.url.path, response.status_code, error))
        return response

    def close(self) -> None:
        self.inner.close()


def test_dpop_nonces_and_proofs_are_shared_by_every_process(trio: Cluster):
    """With nonces required, a nonce any process issued is accepted by every other, and a
    proof used at one is a replay at all; the stock client, through a round-robin balancer,
    meets a challenge at one process and is accepted at the next."""
    servers = trio.servers
    htu = PUBLIC_URL + "/oauth/token"  # the same for every process, as behind one address
    size = size_everywhere(trio)
    for n, (i, j) in enumerate(itertools.permutations(range(3), 2)):
        issuer, other = servers[i], servers[j]
        holder = key(f"nonce-holder-{n}")
        form = issuer.exchange_form(issuer.grant(holder))
        challenge = httpx.post(
            issuer.url("/oauth/token"),
            data=form,
            headers={"DPoP": make_proof(holder.seed, "POST", htu)},
            timeout=30,
        )
        assert challenge.status_code == 400
        assert challenge.json()["error"] == "use_dpop_nonce"
        nonce = challenge.headers["DPoP-Nonce"]  # issued by process i
        proof = make_proof(holder.seed, "POST", htu, nonce=nonce)
        answer = httpx.post(other.url("/oauth/token"), data=form, headers={"DPoP": proof})
        assert answer.status_code == 200, f"process {j} refused process {i}'s nonce: {answer.text}"
        size += 1
        for k, srv in enumerate(servers):  # that proof, replayed anywhere, is a replay
            again = httpx.post(srv.url("/oauth/token"), data=form, headers={"DPoP": proof})
            assert again.status_code == 400, f"process {k} took a proof used at {j}"
            assert again.json()["error"] == "invalid_dpop_proof", again.text
    assert {srv.size() for srv in servers} == {size}  # nothing refused was appended

    # The stock client, through a round-robin balancer: a challenge from one process,
    # answered at the next.
    balancer = RoundRobin(servers)
    with LineageClient(
        PUBLIC_URL,
        log_key=trio.log_key.vkey,
        client=httpx.Client(transport=balancer, timeout=30),
    ) as lineage:
        agent, reader = Agent(key("client-agent")), Agent(key("client-reader"))
        scope = read_scope()
        grant = lineage.grant(
            key("alice@corp"), "alice@corp", agent, task="t", scope=scope, max_depth=1
        )
        sub = lineage.delegate(agent, grant, reader, task="t/read", scope=scope)
        assert lineage.introspect(sub, holder=reader)["active"] is True
        lineage.verify_lineage(reader, sub)
        lineage.revoke(sub, holder=reader)
    challenged = [n for n, (_, _, _, err) in enumerate(balancer.sent) if err == "use_dpop_nonce"]
    assert challenged, balancer.sent  # the client did meet a challenge ...
    for n in challenged:  # ... and its retry, at the next process, was accepted
        assert balancer.sent[n + 1][0] != balancer.sent[n][0]
        assert balancer.sent[n + 1][2] == 200, balancer.sent
    assert all(
        status < 400 for n, (_, _, status, _) in enumerate(balancer.sent) if n not in challenged
    ), balancer.sent
    assert len({port for port, *_ in balancer.sent}) == 3
    assert introspect(servers[0], sub)["lineage"]["status"] == "revoked"


# -- 5. key rotation under load ----------------------------------------------------------------


@pytest.mark.slow
def test_rotating_keys_while_two_processes_serve_under_load(tmp_path):
    """``lineage key rotate decision``, then ``operator``, while two processes decide and
    issue from background threads: every request succeeds, both processes decide and
    revoke afterwards without a restart, and nothing is signed by a key once retired.
    (Revocations in flight during the operator rotation: the next test.)"""
    with serving(tmp_path, 2) as cluster:
        a, b = cluster.servers
        ring = KeyRing.load(cluster.keys)
        old_decision, old_operator = ring.decision.kid, ring.operator.kid
        grant = a.grant(max_uses=None)
        issue(a, grant, a.agent)
        serial = itertools.count()

        def fresh(srv: Server) -> tuple[SigningKey, str]:
            """A new credential issued at ``srv`` (signed by alice: no operator key involved)."""
            holder = key(f"fresh-{next(serial)}")
            entry = srv.grant(holder, max_uses=None)
            issue(srv, entry, holder)
            return holder, entry.id

        with Load() as load:
            for srv in (a, b):
                load.run(f"decide-{srv.base}", lambda srv=srv: decide(srv, srv.agent, grant.id))
                load.run(f"issue-{srv.base}", lambda srv=srv: fresh(srv))
            load.until(8)

            rotate(cluster, "decision")
            decided = [decide(srv, srv.agent, grant.id) for srv in (a, b)]
            assert [x["decision"] for x in decided] == ["allow", "allow"], decided

            rotate(cluster, "operator")
            for srv, other in ((a, b), (b, a)):  # issued at one, revoked at the other
                holder, handle = fresh(other)
                r = revoke(srv, handle, srv.operator)
                assert r.status_code == 200, r.text  # signed with the new operator key
                assert decide(other, holder, handle)["reason"].startswith("revoked")
                assert decide(srv, holder, handle)["reason"].startswith("revoked")
            load.until(load.count() + 8)  # and the load goes on after both rotations
        assert not load.errors, load.errors[:5]
        for _, name, x in load.results:
            if name.startswith("decide"):
                assert x["decision"] == "allow", x

    leaves = cluster.leaves()
    entries = {leaf.index: leaf_entry(leaf) for leaf in leaves}
    retired = {
        e.body.key.kid: i
        for i, e in entries.items()
        if isinstance(e.body, KeyChange) and e.body.op == "retire"
    }
    assert set(retired) == {old_decision, old_operator}
    new = KeyRing.load(cluster.keys)
    assert {new.decision.kid, new.operator.kid}.isdisjoint(retired)
    for i, e in entries.items():  # nothing is signed by a key after its retirement
        if isinstance(e.body, Access) and i > retired[old_decision]:
            assert e.sigs[0].kid == new.decision.kid, i
        if isinstance(e.body, Revocation) and i > retired[old_operator]:
            assert e.sigs[0].kid == new.operator.kid, i
    for x in decided:  # each process decided with the new key, without a restart
        assert x["index"] > retired[old_decision]
        assert entries[x["index"]].sigs[0].kid == new.decision.kid
    decisions_after = [
        x
        for _, n, x in load.results
        if n.startswith("decide") and x["index"] > retired[old_operator]
    ]
    assert decisions_after  # the load outlived both rotations
    assert audit(cluster.db, cluster.log_key).size == len(leaves)


# -- 6. a revocation in flight while the operator key is retired ---------------------------------


def test_a_revocation_in_flight_during_an_operator_rotation_is_not_refused(trio: Cluster):
    """An operator's or enforcement point's ``/oauth/revoke`` is acknowledged (and binds)
    even when ``lineage key rotate operator`` retires the operator key while it is in flight.

    The rotation is ``lineage key rotate``'s own ``rotate_key``, run here so that its
    ``retire`` transaction can be held open for 0.8 s: revocations that reach the
    three processes meanwhile are signed under the committed state (the old key still active)
    and wait for the write lock, and are written after the retirement. That is the window a
    rotation under load hits by chance (one or two of ~120 concurrent revocations through two
    processes, per ``lineage key rotate operator``); here it is hit every time."""
    servers = trio.servers
    pending: list[tuple[Server, SigningKey, str]] = []
    for n, srv in enumerate(servers * 2):
        holder = key(f"in-flight-{n}")
        entry = srv.grant(holder, max_uses=None)
        issue(srv, entry, holder)
        pending.append((servers[(n + 1) % 3], holder, entry.id))  # revoked at another
    answers: dict[str, httpx.Response] = {}
    senders: list[threading.Thread] = []

    def send(srv: Server, handle: str, bearer: str) -> None:
        answers[handle] = revoke(srv, handle, bearer)

    log = open_ledger(trio.db, trio.keys)
    admit = log.admit

    def retire_slowly(entry: Entry, view: Any, index: int, now: int) -> None:
        if isinstance(entry.body, KeyChange) and entry.body.op == "retire" and not senders:
            for n, (srv, _, handle) in enumerate(pending):
                bearer = srv.operator if n % 2 else srv.enforcement
                senders.append(threading.Thread(target=send, args=(srv, handle, bearer)))
                senders[-1].start()
            time.sleep(0.8)  # they sign and queue for the lock this transaction holds
        if admit is not None:
            admit(entry, view, index, now)

    log.admit = retire_slowly
    try:
        old, new, _ = rotate_key(log, trio.keys, "operator")
    finally:
        log.close()
        log.store.close()
    for sender in senders:
        sender.join(60)
    assert len(answers) == len(pending)
    refused = {h[:16]: (r.status_code, r.text) for h, r in answers.items() if r.status_code != 200}
    assert not refused, f"revocations refused during the rotation of {old} to {new}: {refused}"
    for srv in servers:  # and they bind, everywhere
        for _, holder, handle in pending:
            assert introspect(srv, handle)["lineage"]["status"] == "revoked"
            assert decide(srv, holder, handle)["reason"].startswith("revoked")
