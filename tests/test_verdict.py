"""What an offline verdict means: regressions for the findings of the outside test campaign.

- an entry appears in a log once (FORMAT.md §8 step 0, ``duplicate``): a repeated grant or
  delegation must not start the credential again with nothing spent;
- agent labels hold no control, separator or invisible formatting character (§4.4), and
  ``lineage-verify`` escapes everything it prints that came from the bundle;
- complete mode (§8): the policy in force, ``iat`` against the leaf's time, nonces;
- every integer in a bundle follows §2 (no ``-0``); nesting counts from each entry (§2);
- ``consistency`` (§9.1 step 5): ``from_size`` at most the checkpoint's size, and the
  proof's length exactly RFC 9162's for (m, N), so none for m = N;
- one check name per failure (§8, §9.1).
"""

from __future__ import annotations

import ast
import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures import features
from fixtures import generate as g
from lineage.verifier.bundle import parse_bundle, verify_bundle
from lineage.verifier.chain import DEFAULT_INVOCATION_WINDOW, Replay
from lineage.verifier.cli import main as verify_main
from lineage.verifier.entry import entry_from_json, parse_entry, parse_leaf, sign_entry
from lineage.verifier.errors import (
    ChainError,
    EncodingError,
    EntryFormatError,
    FormatError,
    ProofError,
    printable,
)
from lineage.verifier.jcs import MAX_DEPTH, canonical, parse
from lineage.verifier.keys import SigningKey

T0 = g.T0
KEY = g.LOG.verifier
OP2 = SigningKey(g.seed("operator-2"))


def replay(log: g.Log, **kw: Any) -> Replay:
    r = Replay(KEY, **kw)
    r.apply_all(enumerate(log.leaves))
    return r


def refused(log: g.Log, check: str, index: int | None = None, **kw: Any) -> ChainError:
    index = len(log.leaves) - 1 if index is None else index
    with pytest.raises(ChainError) as info:
        replay(log, **kw)
    assert info.value.check == check, str(info.value)
    assert info.value.entry_id == log.leaves[index].entry.id, str(info.value)
    return info.value


def to_bytes(bundle: dict[str, Any]) -> bytes:
    return json.dumps(bundle, indent=1).encode()


def without(bundle: dict[str, Any], index: int) -> dict[str, Any]:
    """The bundle with the leaf at ``index`` left out (a subset: every other proof holds)."""
    out = copy.deepcopy(bundle)
    out["entries"] = [e for e in out["entries"] if e["index"] != index]
    return out


# --- an entry appears once -------------------------------------------------------------------


@pytest.mark.parametrize("what", ["uses", "rate", "children"])
def test_a_repeated_grant_does_not_reset_its_budget(what):
    """The repeated grant is refused; without it the same bundle is a budget fault, so
    the repeat is the only thing that made the later use (or child) look affordable."""
    log, detail = features.repeated_entry_bundles()[what]
    grant_id = log.leaves[5].entry.id
    repeat = next(i for i, leaf in enumerate(log.leaves) if i > 5 and leaf.entry.id == grant_id)
    err = refused(log, "duplicate", repeat)
    assert "index 5" in str(err)
    bundle = log.bundle()
    with pytest.raises(ChainError) as info:
        verify_bundle(to_bytes(bundle), KEY)
    assert info.value.check == "duplicate"
    with pytest.raises(ChainError) as info:
        verify_bundle(to_bytes(without(bundle, repeat)), KEY)
    assert info.value.check == "budget", str(info.value)
    assert detail in str(info.value)


def test_a_repeated_delegation_is_refused():
    log = g.story()
    log.append(log.leaves[4].entry, T0 + 70)
    refused(log, "duplicate")


def test_the_same_access_entry_twice_is_a_duplicate_and_a_new_one_with_its_nonce_a_replay():
    log = g.story()
    log.append(log.leaves[5].entry, T0 + 62)
    refused(log, "duplicate")
    log = g.story()
    log.append(g.access(log.leaves[4].entry, g.READER, 1, iat=T0 + 62), T0 + 62)
    refused(log, "replay")


def test_a_repeat_at_a_later_index_is_refused_whatever_lies_between():
    log = g.story(g.revocation_story)
    log.append(log.leaves[1].entry, T0 + 200)  # alice's binding, again
    refused(log, "duplicate")


# --- agent labels and what lineage-verify prints -----------------------------------------------

HOSTILE = [
    "\x1b[2K\rOK  all good",
    "tab\there",
    "line\nbreak",
    "del\x7f",
    "c1\x85next-line",
    "c1\x9bcsi",
    "soft\u00adhyphen",
    "alm\u061c",
    "mvs\u180e",
    "zw\u200bspace",
    "zwj\u200d",
    "lrm\u200e",
    "rlm\u200f",
    "ls\u2028",
    "ps\u2029",
    "rlo\u202eevil",
    "lre\u202a",
    "wj\u2060",
    "lri\u2066x\u2069",
    "bom\ufeff",
    "iaa\ufff9",
    # found from outside after the first rule: invisible or look-alike, yet "printable"
    "bot\U000e0041\U000e0042",  # tag characters
    "bot\ufe0f",  # variation selector
    "bot\u034f",  # combining grapheme joiner
    "bot\u3164",  # Hangul filler
    "bot\uffff",  # a noncharacter
    "bot\ue000",  # private use
    "café-agent",
    "助手",
    "agent\u00a0nbsp",
]


@pytest.mark.parametrize("label", HOSTILE)
def test_an_agent_label_outside_printable_ascii_is_refused(label):
    with pytest.raises(EntryFormatError) as info:
        g.grant(agent=label)
    assert info.value.field == "agent"
    with pytest.raises(EntryFormatError) as info:
        g.delegation(g.grant(), agent=label)
    assert info.value.field == "agent"


@pytest.mark.parametrize("label", ["triage", "Triage Bot 2", "a-b_c.d:e/f ~!", "x" * 128])
def test_a_printable_ascii_agent_label_is_accepted(label):
    assert g.grant(agent=label).body.agent == label


def test_an_agent_label_of_129_characters_is_refused():
    with pytest.raises(EntryFormatError):
        g.grant(agent="x" * 129)


def test_a_label_signed_before_the_rule_no_longer_parses():
    """An entry carrying an escape sequence is refused at parse, signature or not."""
    obj = json.loads(canonical(g.grant().obj))
    obj["agent"] = "\x1b[31mroot"
    with pytest.raises(EntryFormatError):
        entry_from_json(obj)


@given(st.text())
def test_printable_escapes_reversibly_to_printable_text(text):
    out = printable(text)
    assert out.isprintable()
    assert ast.literal_eval('"' + out.replace('"', '\\"') + '"') == text
    if text.isprintable() and "\\" not in text:
        assert out == text


def _hostile_bundle() -> dict[str, Any]:
    bundle = g.story().bundle()
    bundle["\x1b[2J\x1b[HOK all verified\x7f"] = 1  # an unknown field: named in the error
    return bundle


def test_lineage_verify_escapes_what_the_bundle_says(tmp_path, capsys):
    path = tmp_path / "hostile.json"
    path.write_bytes(json.dumps(_hostile_bundle()).encode())
    assert verify_main([str(path), "--log-key", KEY.vkey]) == 1
    out = capsys.readouterr()
    assert out.err.startswith("FAIL  format: ")
    assert out.err.rstrip("\n").isprintable()
    assert "\x1b" not in out.err and "\x7f" not in out.err
    assert "\\x1b[2J\\x1b[HOK all verified\\x7f" in out.err
    assert verify_main([str(path), "--log-key", KEY.vkey, "--json"]) == 1
    text = capsys.readouterr().out
    assert all(" " <= c <= "~" or c == "\n" for c in text), text
    assert "\x1b[2J" in json.loads(text)["error"]  # the JSON still says exactly what was there


def test_lineage_verify_prints_labels_escaped(tmp_path, capsys, monkeypatch):
    """Even a label that slipped past the format (a verifier reading an older rule) is
    printed escaped: the summary goes through the same escaping."""
    from lineage.verifier import cli

    summary = cli.summary

    def hostile(vb):
        s = summary(vb)
        s["chains"][0]["links"][0]["agent"] = "x\x1b[1A\rOK fake line\u2028"
        return s

    path = tmp_path / "b.json"
    path.write_bytes(to_bytes(g.story().bundle()))
    monkeypatch.setattr(cli, "summary", summary)
    assert verify_main([str(path), "--log-key", KEY.vkey]) == 0
    lines = len(capsys.readouterr().out.splitlines())
    monkeypatch.setattr(cli, "summary", hostile)
    assert verify_main([str(path), "--log-key", KEY.vkey]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u2028" not in out and "\r" not in out
    assert "x\\x1b[1A\\x0dOK fake line\\u2028" in out
    assert len(out.splitlines()) == lines


# --- complete mode ------------------------------------------------------------------------------


def _log_with_access(policy: int | None, access_policy: int, iat: int, time: int) -> g.Log:
    """genesis, alice, [policy], grant, then an allowed use of the grant naming a policy."""
    log = g.Log()
    log.append(g.genesis(), T0)
    log.append(g.bind_alice(), T0 + 1)
    if policy is not None:
        log.append(sign_entry(g.body("policy", version=policy, document={}), [g.OPERATOR]), T0 + 2)
    grant = log.append(g.grant(), T0 + 10)
    access = g.access(grant, g.AGENT, 1, iat=iat)
    obj = {k: v for k, v in access.obj.items() if k != "sigs"}
    obj["policy"] = access_policy
    log.append(sign_entry(obj, [g.DECISION]), time)
    return log


@pytest.mark.parametrize(
    "in_force, named, partial_ok, complete_ok",
    [
        (None, 0, True, True),
        (None, 1, True, False),  # a version no policy entry ever set
        (1, 1, True, True),
        (1, 2, True, False),  # a bundle may leave policies out; the whole log may not
        (1, 0, False, False),
        (3, 2, False, False),
    ],
)
def test_a_complete_replay_requires_the_policy_in_force(in_force, named, partial_ok, complete_ok):
    log = _log_with_access(in_force, named, T0 + 60, T0 + 60)
    for complete, ok in ((False, partial_ok), (True, complete_ok)):
        if ok:
            replay(log, complete=complete)
        else:
            refused(log, "policy", complete=complete)


@pytest.mark.parametrize("skew", [-61, -60, 0, 60, 61])
def test_a_complete_replay_checks_iat_against_the_leaf_time(skew):
    time = T0 + 100
    log = _log_with_access(1, 1, time + skew, time)
    replay(log)  # partial: freshness is not the bundle's to judge
    if abs(skew) <= DEFAULT_INVOCATION_WINDOW:
        replay(log, complete=True)
    else:
        err = refused(log, "freshness", complete=True)
        assert f"{abs(skew)} s" in str(err)
    replay(log, complete=True, invocation_window=61)
    if skew:
        refused(log, "freshness", complete=True, invocation_window=abs(skew) - 1)


def test_a_complete_replay_refuses_a_nonce_already_in_a_denied_access():
    log = g.story()
    log.append(g.access(log.leaves[4].entry, g.READER, 7, decision="deny", iat=T0 + 62), T0 + 62)
    log.append(g.access(log.leaves[4].entry, g.READER, 7, iat=T0 + 63), T0 + 63)
    replay(log)  # partial: only an earlier allow makes a replay
    refused(log, "replay", complete=True)


def test_the_example_log_is_complete():
    replay(g.story(g.revocation_story), complete=True)
    replay(features.rich(), complete=True)


def test_the_invocation_window_must_be_a_number_of_seconds():
    for bad in (-1, 1.5, True, "60"):
        with pytest.raises(ValueError):
            Replay(KEY, complete=True, invocation_window=bad)


# --- integers and nesting -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ['"index": 0', '"time": 1767225600', '"from_size": 3'])
def test_minus_zero_is_refused_anywhere_in_a_bundle(where):
    log = g.story()
    text = json.dumps(log.bundle(since=3))
    assert text.count(where) >= 1
    key, _ = where.split(": ")
    bad = text.replace(where, f"{key}: -0", 1).encode()
    with pytest.raises(EncodingError, match="-0"):
        parse_bundle(bad)
    with pytest.raises(FormatError):
        verify_bundle(bad, KEY)
    assert verify_bundle(text.encode(), KEY)


def test_minus_zero_is_refused_by_every_parser():
    for doc in (b"-0", b"[-0]", b'{"a":-0}', b'{"a": [1, -0 ]}'):
        with pytest.raises(EncodingError):
            parse(doc)
    assert parse(b"[0, -1, 10]") == [0, -1, 10]


def _nest(levels: int) -> Any:
    """``levels`` objects around the integer 1: the 1 sits ``levels`` below the top."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def _deep_policy(levels: int) -> dict[str, Any]:
    """A policy entry object whose deepest value is at depth 1 + ``levels`` in the entry."""
    return g.body("policy", version=1, document=_nest(levels))


def test_nesting_counts_from_the_entry_at_the_limit():
    """The deepest value at depth 32 of the entry: an entry, a leaf and a bundle accept it."""
    deep = sign_entry(_deep_policy(MAX_DEPTH - 1), [g.OPERATOR])
    assert parse_entry(deep.raw) == deep
    log = g.Log()
    log.append(g.genesis(), T0)
    log.append(deep, T0 + 1)
    assert parse_leaf(log.leaves[1].raw).entry == deep
    assert verify_bundle(to_bytes(log.bundle()), KEY).replay.policy_version == 1


def test_nesting_one_past_the_limit_is_refused_everywhere():
    obj = json.loads(canonical(sign_entry(_deep_policy(MAX_DEPTH - 1), [g.OPERATOR]).obj))
    obj["document"] = _nest(MAX_DEPTH)  # the deepest value now at depth 33 of the entry
    with pytest.raises(EncodingError):
        sign_entry({k: v for k, v in obj.items() if k != "sigs"}, [g.OPERATOR])
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(EncodingError):
        parse_entry(raw)
    with pytest.raises(EncodingError):
        parse_leaf(b'{"entry":' + raw + b',"time":1}')
    with pytest.raises(FormatError):
        entry_from_json(obj)
    bundle = g.story().bundle()
    bundle["entries"][2]["leaf"]["entry"] = obj
    with pytest.raises(EncodingError):
        parse_bundle(to_bytes(bundle))


def test_a_bundle_is_not_deeper_than_its_entries_allow():
    """A bundle is parsed with 36 levels (an entry's 32 below its depth of 4): past that,
    anywhere in it, it is refused before anything else is read."""
    bundle = g.story().bundle()
    bundle["x"] = _nest(MAX_DEPTH + 5)
    with pytest.raises(EncodingError):
        parse_bundle(to_bytes(bundle))


# --- consistency ----------------------------------------------------------------------------


def _log() -> g.Log:
    return g.story(g.revocation_story)


def test_from_size_beyond_the_checkpoint_is_a_proof_failure():
    log = _log()
    n = len(log.leaves)
    bundle = log.bundle(since=n)
    bundle["consistency"]["from_size"] = n + 1
    with pytest.raises(ProofError, match="exceeds"):
        verify_bundle(to_bytes(bundle), KEY)
    with pytest.raises(ProofError):
        verify_bundle(to_bytes(bundle), KEY, log.checkpoint(n).encode())


def test_from_size_equal_to_the_checkpoint_needs_an_empty_proof():
    log = _log()
    n = len(log.leaves)
    bundle = log.bundle(since=n)
    assert bundle["consistency"] == {"from_size": n, "proof": []}
    assert verify_bundle(to_bytes(bundle), KEY)
    assert verify_bundle(to_bytes(bundle), KEY, log.checkpoint(n).encode())
    bundle["consistency"]["proof"] = log.bundle(since=n - 1)["consistency"]["proof"]
    for since in (None, log.checkpoint(n).encode()):
        with pytest.raises(ProofError, match="has 0 hashes"):
            verify_bundle(to_bytes(bundle), KEY, since)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 6])
def test_a_consistency_proof_of_the_wrong_length_is_refused_without_since(m):
    log = _log()
    bundle = log.bundle(since=m)
    assert verify_bundle(to_bytes(bundle), KEY)
    longer = copy.deepcopy(bundle)
    longer["consistency"]["proof"].append(longer["consistency"]["proof"][0])
    shorter = copy.deepcopy(bundle)
    shorter["consistency"]["proof"].pop()
    for bad in (longer, shorter):
        with pytest.raises(ProofError):
            verify_bundle(to_bytes(bad), KEY)


@pytest.mark.parametrize("value", [0, -1, "1", 1.0, None])
def test_from_size_outside_its_type_is_a_format_failure(value):
    bundle = _log().bundle(since=1)
    bundle["consistency"]["from_size"] = value
    with pytest.raises(FormatError):
        parse_bundle(to_bytes(bundle))


# --- one check name per failure ---------------------------------------------------------------


def _cli_check(tmp_path, bundle: dict[str, Any], capsys) -> str:
    path = tmp_path / "b.json"
    path.write_bytes(to_bytes(bundle))
    assert verify_main([str(path), "--log-key", KEY.vkey, "--json"]) == 1
    return json.loads(capsys.readouterr().out)["check"]


@pytest.mark.parametrize("how", ["repeat", "swap", "decrease"])
def test_non_increasing_indexes_are_order_only(tmp_path, capsys, how):
    bundle = g.story().bundle()
    entries = bundle["entries"]
    if how == "repeat":
        entries.insert(4, copy.deepcopy(entries[3]))
    elif how == "swap":
        entries[3], entries[4] = entries[4], entries[3]
    else:
        entries[4]["index"] = 2
    assert _cli_check(tmp_path, bundle, capsys) == "order"


def test_a_missing_genesis_is_genesis_only(tmp_path, capsys):
    bundle = g.story().bundle(indexes=[1, 2, 3])
    parse_bundle(to_bytes(bundle))  # the schema does not ask for a genesis
    assert _cli_check(tmp_path, bundle, capsys) == "genesis"


def test_a_second_signature_is_format(tmp_path, capsys):
    bundle = g.story().bundle()
    sigs = bundle["entries"][3]["leaf"]["entry"]["sigs"]
    other = g.grant(g.MALLORY).obj["sigs"][0]
    sigs[:] = sorted([sigs[0], other], key=lambda s: s["kid"])
    assert _cli_check(tmp_path, bundle, capsys) == "format"


@pytest.mark.parametrize(
    "keys",
    [
        [],
        [{"key": g.DECISION.public.b64, "roles": ["decision"]}],  # no operator
        [{"key": g.OPERATOR.public.b64, "roles": ["operator"]}] * 2,  # a key twice
        [{"key": g.OPERATOR.public.b64, "roles": ["auditor"]}],  # not an operator role
    ],
)
def test_a_bad_genesis_key_list_is_format(tmp_path, capsys, keys):
    genesis = g.body("genesis", log_key=g.LOG.verifier.vkey, keys=keys)
    with pytest.raises(EntryFormatError):
        sign_entry(genesis, [g.LOG_ENTRY_KEY])
    bundle = g.story().bundle()
    bundle["entries"][0]["leaf"]["entry"].update(keys=keys)
    assert _cli_check(tmp_path, bundle, capsys) == "format"


@pytest.mark.parametrize(
    "text",
    ["\x1b]0;TITLE\x07", "line\nbreak", "rlo\u202eevil", "tag\U000e0041", "nc\uffff", "c1\x85"],
)
def test_a_task_description_with_a_control_or_invisible_character_is_refused(text):
    """Found from outside: the rule closed for ``agent`` was open in ``task.description``."""
    with pytest.raises(EntryFormatError) as info:
        g.grant(task={"id": "t", "description": text})
    assert info.value.field == "task.description"


def test_a_task_description_in_any_script_is_accepted():
    text = "Trier la boîte de réception · 整理收件箱 · ✉️"
    assert (
        g.grant(task={"id": "t", "description": text}).body.credential.limits.task.description
        == text
    )
