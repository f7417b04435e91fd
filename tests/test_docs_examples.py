"""Every example the docs quote is accepted by the code the docs describe: the ledger.

``tests/test_fixtures.py`` checks that FORMAT.md quotes ``fixtures/examples/`` byte for
byte and that the offline verifier accepts the bundles built from them. That is not
enough: the verifier leaves a policy's document and the operator's ceilings to the
ledger, so an example could verify and still be refused by ``lineage``. Here each quoted
entry goes through a real ledger (SQLite file, the fixtures' own keys loaded from key
files, the admission hook of the default settings, an injected clock set to the time the
example was logged) in story order, and the ledger decides the quoted invocation.

Also: every policy document in POLICY.md parses and is appended; the worked key file of
FORMAT.md §3.1 parses to the public key and kid quoted beside it. Mutated examples are
refused, so none of these tests passes vacuously.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lineage.ledger.config import Settings
from lineage.ledger.decide import decide, record_result
from lineage.ledger.errors import RejectedEntry
from lineage.ledger.keys import write_secret
from lineage.ledger.ledger import open_ledger
from lineage.ledger.log import Log
from lineage.ledger.policy import parse_policy
from lineage.ledger.store import SQLiteStore
from lineage.verifier.entry import Entry, sign_entry
from lineage.verifier.errors import EntryFormatError, KeyFormatError
from lineage.verifier.invocation import sign_invocation
from lineage.verifier.keys import SigningKey, key_file_text, load_key_file, parse_key_file
from lineage.verifier.note import Signer, format_skey
from lineage.verifier.receipt import verify_receipt

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "fixtures" / "examples"
FORMAT = (DOCS / "FORMAT.md").read_text()
POLICY_DOC = (DOCS / "POLICY.md").read_text()
KEYS = json.loads((EXAMPLES / "keys.json").read_text())
LOG_VKEY = (ROOT / "fixtures" / "log.vkey").read_text().strip()
ORIGIN = LOG_VKEY.split("+")[0]

# The example entries FORMAT.md quotes, in the order the story logs them (FORMAT.md §4).
STORY = ["genesis", "key", "policy", "grant", "delegation", "access", "result", "revocation"]
# revocation has no leaf file: FORMAT.md quotes only its entry. It is logged at this time
# (fixtures/generate.py, revocation_story), after the six leaves of the example log (and,
# here, after the result of its access, fixtures/generate.py's result_story).
REVOCATION_TIME = 1767225600 + 120


def signing_key(name: str) -> SigningKey:
    """A fixture key, from the seed keys.json publishes (FORMAT.md: 'their seeds are in')."""
    return SigningKey(bytes.fromhex(KEYS[name]["seed_hex"]))


OPERATOR = signing_key("operator")
DECISION = signing_key("decision")
READER = signing_key("agent:reader")
LOG_SIGNER = Signer(ORIGIN, bytes.fromhex(KEYS["log"]["seed_hex"]))


def example(name: str) -> bytes:
    """The bytes of a quoted example entry (the file adds one newline for the reader)."""
    data = (EXAMPLES / f"{name}.entry.json").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return data[:-1]


def example_obj(name: str) -> dict[str, Any]:
    return json.loads(example(name))


def quoted_in_format(path: str) -> str:
    """The body of the fenced block FORMAT.md marks ``<!-- example: PATH -->``."""
    m = re.search(rf"<!-- example: {re.escape(path)} -->\n```[a-z]*\n(.*?)```", FORMAT, re.S)
    assert m is not None, f"FORMAT.md does not quote {path}"
    return m.group(1)


def leaf_time(name: str) -> int:
    if name == "revocation":
        return REVOCATION_TIME
    return json.loads((EXAMPLES / f"{name}.leaf.json").read_bytes())["time"]


def resign(name: str, change: Callable[[dict[str, Any]], None], signer: SigningKey) -> Entry:
    """The example with ``change`` made to its body, signed again by its own signer."""
    body = {k: v for k, v in example_obj(name).items() if k != "sigs"}
    change(body)
    return sign_entry(body, [signer])


class Clock:
    """The ledger's clock, set by the test to the time each example was logged."""

    def __init__(self, now: int = 0):
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


def fixture_ledger(tmp_path: Path, clock: Clock, settings: Settings | None = None) -> Log:
    """A real, empty ledger whose log, operator and decision keys are the fixtures'.

    Not ``init_ledger``: it writes a genesis of its own, with the same keys but listed in
    another order (sorted by key), so other bytes and another id, and a log has one
    genesis. So this does what ``init_ledger`` does up to its genesis (key files written
    owner-only, origin and log key recorded in a new database) and opens the ledger with
    ``open_ledger`` (which loads the key files and installs the operator's ceilings as the
    admission hook); the quoted genesis is then appended through the ledger's ``append``
    like any other entry, and checked by the same replay and admission.
    """
    keys = tmp_path / "lineage-keys"
    write_secret(keys / "log.key", format_skey(LOG_SIGNER) + "\n")
    write_secret(keys / "operator.key", key_file_text(OPERATOR))
    write_secret(keys / "decision.key", key_file_text(DECISION))
    db = tmp_path / "lineage.db"
    store = SQLiteStore(db, create=True)
    store.set_meta("origin", ORIGIN)
    store.set_meta("log_key", LOG_VKEY)
    store.close()
    log = open_ledger(db, keys, clock=clock, settings=settings or Settings())
    assert log.log_key.vkey == LOG_VKEY and log.admit is not None
    return log


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Log]:
    log = fixture_ledger(tmp_path, clock)
    yield log
    log.close()


def append_story(log: Log, clock: Clock, names: list[str]) -> None:
    """Append the quoted examples ``names`` (a prefix of STORY), each at its logged time."""
    for index, name in enumerate(names):
        clock.now = leaf_time(name)
        result = log.append(example(name))
        assert (result.index, result.existing) == (index, False), name


# -- every quoted entry, appended by the ledger -------------------------------------------


def test_format_quotes_every_example_entry_of_the_story():
    for name in STORY:
        assert quoted_in_format(f"examples/{name}.entry.json").encode() == example(name) + b"\n"
    assert (
        quoted_in_format("examples/invocation.json").encode()
        == (EXAMPLES / "invocation.json").read_bytes()
    )


@pytest.mark.parametrize("name", STORY)
def test_the_ledger_appends_the_quoted_example(ledger: Log, clock: Clock, name: str):
    at = STORY.index(name)
    append_story(ledger, clock, STORY[:at])
    clock.now = leaf_time(name)
    result = ledger.append(example(name))  # raw bytes: parsed strictly, as the API does
    assert not result.existing and result.index == at
    assert result.id == (EXAMPLES / f"{name}.id").read_text().strip()
    leaf = ledger.leaf(at)
    assert leaf.entry.raw == example(name)
    if name != "revocation":  # the log wraps it into exactly the quoted leaf
        assert leaf.raw + b"\n" == (EXAMPLES / f"{name}.leaf.json").read_bytes()
        assert leaf.hash.hex() == (EXAMPLES / f"{name}.leaf-hash").read_text().strip()


def test_the_ledger_signs_the_quoted_checkpoint(ledger: Log, clock: Clock):
    append_story(ledger, clock, STORY[:6])
    assert ledger.root().hex() == (EXAMPLES / "root.hex").read_text().strip()
    assert ledger.checkpoint() == (EXAMPLES / "checkpoint.txt").read_bytes()
    clock.now = REVOCATION_TIME
    assert ledger.append(example("revocation")).index == 6


def test_the_ledger_decides_the_quoted_invocation(ledger: Log, clock: Clock):
    """The access example is what the ledger writes when asked about the invocation."""
    append_story(ledger, clock, STORY[:5])
    access = example_obj("access")
    invocation = json.loads((EXAMPLES / "invocation.json").read_bytes())
    assert invocation == access["invocation"]
    clock.now = leaf_time("access")
    decision = decide(
        ledger,
        invocation,
        access["context"],
        access["enforcement"],
        window=Settings().invocation_window,
    )
    assert decision.allowed, decision.reason
    assert (decision.policy, decision.index) == (1, 5)
    assert decision.entry.raw == example("access")
    assert ledger.leaf(5).raw + b"\n" == (EXAMPLES / "access.leaf.json").read_bytes()
    # ... and its answer carries the receipt FORMAT.md §9.4 quotes, exactly
    quoted = json.loads(quoted_in_format("receipts/valid-access.json"))
    assert decision.receipt is not None and decision.receipt.to_json() == quoted
    assert verify_receipt(quoted, ledger.log_key, decision.id).index == 5


def test_the_ledger_records_the_quoted_result(ledger: Log, clock: Clock):
    """The result example (FORMAT.md §4.8) is what ``record_result`` writes for the
    example access, byte for byte; a second, different answer is refused."""
    append_story(ledger, clock, STORY[:6])
    quoted = example_obj("result")
    assert quoted["access"] == (EXAMPLES / "access.id").read_text().strip()
    clock.now = leaf_time("result")
    recorded = record_result(
        ledger, quoted["access"], quoted["enforcement"], upstream_status=quoted["upstream_status"]
    )
    assert (recorded.index, recorded.existing) == (6, False)
    assert recorded.entry.raw == example("result")
    assert ledger.leaf(6).raw + b"\n" == (EXAMPLES / "result.leaf.json").read_bytes()
    with pytest.raises(RejectedEntry) as info:
        record_result(ledger, quoted["access"], quoted["enforcement"], failure="timeout")
    assert info.value.check == "duplicate-result" and ledger.size == 7


def test_the_ledger_decides_the_quoted_approved_call(ledger: Log, clock: Clock):
    """FORMAT.md §5.1: the approved access example is what the ledger writes when it decides
    the quoted invocation with the quoted approval, 90 s after the invocation was made (past
    the window, within the approval); the approval is alice's signature over the quoted
    bytes. Attached to another invocation, it is refused and nothing is written."""
    from lineage.verifier.approval import parse_approval
    from lineage.verifier.keys import APPROVAL_CONTEXT

    quoted = json.loads(quoted_in_format("examples/approval.json"))
    approval = parse_approval(quoted)
    signed = bytes.fromhex(quoted_in_format("examples/approval.signed-message.hex").strip())
    assert signed == approval.message() and signed.startswith(APPROVAL_CONTEXT)
    approval.verify(signing_key("alice@corp").public)
    entry = json.loads(quoted_in_format("examples/approved-access.entry.json"))
    assert entry["approval"] == quoted
    append_story(ledger, clock, STORY[:6])
    clock.now = leaf_time("access") + 99  # T0 + 160
    with pytest.raises(RejectedEntry) as info:
        other = sign_invocation(
            signing_key("agent:triage"),
            entry["invocation"]["credential"],
            entry["invocation"]["request"],
            entry["invocation"]["iat"],
        )
        decide(ledger, other, entry["context"], entry["enforcement"], approval=quoted)
    assert info.value.check == "approval" and ledger.size == 6
    decision = decide(
        ledger,
        entry["invocation"],
        entry["context"],
        entry["enforcement"],
        window=Settings().invocation_window,
        approval=quoted,
    )
    assert decision.allowed, decision.reason
    assert (
        decision.entry.raw + b"\n"
        == quoted_in_format("examples/approved-access.entry.json").encode()
    )


def test_the_ledger_denies_a_mutated_invocation(ledger: Log, clock: Clock):
    append_story(ledger, clock, STORY[:5])
    invocation = json.loads((EXAMPLES / "invocation.json").read_bytes())
    request = {**invocation["request"], "action": "send"}  # the reader may only read
    clock.now = leaf_time("access")
    signed = sign_invocation(
        READER, invocation["credential"], request, invocation["iat"], invocation["nonce"]
    )
    decision = decide(ledger, signed, {}, "gateway-1")
    assert not decision.allowed and decision.check == "scope"


# -- mutated examples are refused ---------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.pop("id"), "document.rules[0].id"),
        (lambda r: r.pop("match"), "document.rules[0].match"),
        (lambda r: r.update(match={"action": "delete"}), "document.rules[0].match.action"),
        (lambda r: r.update(max_grant_age=0), "document.rules[0].max_grant_age"),
        (lambda r: r.pop("max_grant_age"), "document.rules[0]"),
    ],
    ids=["no-id", "no-match", "unknown-match-field", "zero-age", "no-limit"],
)
def test_the_ledger_refuses_a_mutated_policy_example(
    ledger: Log, clock: Clock, change: Callable[[dict[str, Any]], Any], field: str
):
    append_story(ledger, clock, STORY[:2])
    clock.now = leaf_time("policy")
    entry = resign("policy", lambda b: change(b["document"]["rules"][0]), OPERATOR)
    with pytest.raises(RejectedEntry) as info:
        ledger.append(entry)
    assert (info.value.check, info.value.field) == ("policy", field), str(info.value)
    assert ledger.size == 2


def test_the_ledger_refuses_the_policy_example_that_used_to_be_quoted(ledger: Log, clock: Clock):
    """The example FORMAT.md §4.3 quoted before: its rule had no id and no match."""
    append_story(ledger, clock, STORY[:2])
    entry = resign(
        "policy",
        lambda b: b.update(document={"rules": [{"action": "delete", "max_grant_age": 600}]}),
        OPERATOR,
    )
    with pytest.raises(RejectedEntry, match=r"document\.rules\[0\]\.id: is required"):
        ledger.append(entry)


def test_the_operators_ceilings_apply_to_the_quoted_grant(tmp_path: Path, clock: Clock):
    """The admission hook is in the path: under a ceiling below its lifetime, it is refused."""
    lifetime = example_obj("grant")["expires_at"] - leaf_time("grant")
    log = fixture_ledger(tmp_path, clock, Settings(ttl_default=60, ttl_max=lifetime - 1))
    try:
        append_story(log, clock, STORY[:3])
        clock.now = leaf_time("grant")
        with pytest.raises(RejectedEntry) as info:
            log.append(example("grant"))
        assert (info.value.check, info.value.field) == ("ceiling", "expires_at")
    finally:
        log.close()


def test_the_quoted_examples_are_refused_out_of_story_order(ledger: Log, clock: Clock):
    append_story(ledger, clock, STORY[:3])
    clock.now = leaf_time("delegation")
    with pytest.raises(RejectedEntry) as info:  # its parent grant is not in the log
        ledger.append(example("delegation"))
    assert info.value.check == "link"


def test_the_quoted_access_names_the_policy_in_force(ledger: Log, clock: Clock):
    append_story(ledger, clock, STORY[:5])
    clock.now = leaf_time("access")
    with pytest.raises(RejectedEntry) as info:
        ledger.append(resign("access", lambda b: b.update(policy=0), DECISION))
    assert info.value.check == "policy"


# -- POLICY.md ----------------------------------------------------------------------------


def policy_documents() -> list[dict[str, Any]]:
    """Every JSON block of POLICY.md that is a policy document (an object of rules)."""
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", POLICY_DOC, re.S)]
    docs = [b for b in blocks if isinstance(b, dict) and "rules" in b]
    assert docs, "POLICY.md has no policy example"
    return docs


@pytest.mark.parametrize("index", range(len(policy_documents())))
def test_every_policy_in_policy_md_is_accepted(ledger: Log, clock: Clock, index: int):
    document = policy_documents()[index]
    parse_policy(document)
    append_story(ledger, clock, STORY[:3])  # the ledger appends it as the next version
    clock.now = leaf_time("policy") + 1
    body = {"kind": "policy", "v": 1, "log": ORIGIN, "version": 2, "document": document}
    assert ledger.append(sign_entry(body, [OPERATOR])).index == 3
    assert ledger.state().policy_version == 2


@pytest.mark.parametrize("index", range(len(policy_documents())))
def test_policy_md_examples_without_a_rule_id_are_refused(index: int):
    document = policy_documents()[index]
    for i in range(len(document["rules"])):
        mutated = copy.deepcopy(document)
        mutated["rules"][i].pop("id")
        with pytest.raises(EntryFormatError) as info:
            parse_policy(mutated)
        assert info.value.field == f"document.rules[{i}].id"


def test_the_quoted_policy_is_a_policy_md_rule():
    """FORMAT.md's example policy is POLICY.md's ``fresh-deletes`` rule, verbatim."""
    rule = example_obj("policy")["document"]["rules"][0]
    rules = [r for d in policy_documents() for r in d["rules"]]
    assert rule in rules


# -- FORMAT.md §3.1: key files ------------------------------------------------------------


def key_file_example() -> tuple[str, dict[str, str], str]:
    """The §3.1 worked example: the key file text, its quoted public key and kid, the seed."""
    section = FORMAT[FORMAT.index("### 3.1 Key files") : FORMAT.index("## 4. Entries")]
    text = quoted_in_format("examples/alice.key")
    m = re.search(r"<!-- key-file-example: public, kid -->\n```\n(.*?)```", section, re.S)
    assert m is not None, "FORMAT.md §3.1 does not quote the public key and kid"
    quoted = dict(line.split() for line in m.group(1).splitlines())
    seed = re.search(r"hex\s+`([0-9a-f]{64})`", section)
    assert seed is not None, "FORMAT.md §3.1 does not quote the seed"
    return text, quoted, seed.group(1)


def test_the_key_file_example_parses_to_the_quoted_key():
    text, quoted, seed_hex = key_file_example()
    assert text == (EXAMPLES / "alice.key").read_text()
    key = parse_key_file(text)
    assert key.public.b64 == quoted["public"]
    assert key.kid == quoted["kid"]
    assert key.seed.hex() == seed_hex
    assert len(text.encode()) == 65 and text.endswith("\n")
    assert key_file_text(key) == text  # what the ledger writes, byte for byte
    # What the prose claims: alice's key as bound in §4.2, the kid signing the grant.
    assert example_obj("key")["key"] == quoted["public"]
    assert example_obj("grant")["sigs"][0]["kid"] == quoted["kid"]
    assert quoted == {"public": KEYS["alice@corp"]["public"], "kid": KEYS["alice@corp"]["kid"]}


@pytest.mark.parametrize(
    "text",
    [
        "  lineage-ed25519-seed:{seed}\r\n",  # surrounding whitespace is ignored
        "lineage-ed25519-seed:{seed}",  # so is a missing newline
        "\tlineage-ed25519-seed:{seed}\n\n",
    ],
)
def test_key_files_ignore_surrounding_whitespace(text: str):
    _, quoted, _ = key_file_example()
    seed = quoted_in_format("examples/alice.key").strip().split(":", 1)[1]
    assert parse_key_file(text.format(seed=seed)).kid == quoted["kid"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace("lineage-ed25519-seed:", "Lineage-Ed25519-Seed:"),
        lambda t: t.replace("lineage-ed25519-seed:", "lineage-ed25519-seed: "),
        lambda t: t.rstrip("\n") + "=\n",  # padded
        lambda t: t.replace("_", "/"),  # base64, not base64url
        lambda t: t[:-2] + "\n",  # 42 characters
        lambda t: t.rstrip("\n") + "AAAA\n",  # 35 bytes
    ],
    ids=["prefix-case", "inner-space", "padding", "not-url-safe", "short", "long"],
)
def test_malformed_key_files_are_refused(mutate: Callable[[str], str]):
    text, _, _ = key_file_example()
    with pytest.raises(KeyFormatError):
        parse_key_file(mutate(text))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o610, 0o602])
def test_key_files_open_to_group_or_others_are_refused(tmp_path: Path, mode: int):
    text, quoted, _ = key_file_example()
    path = tmp_path / "alice.key"
    write_secret(path, text)  # created 0600, as the ledger writes key files
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_key_file(path).kid == quoted["kid"]
    os.chmod(path, mode)
    with pytest.raises(KeyFormatError, match="readable by group or others"):
        load_key_file(path)
