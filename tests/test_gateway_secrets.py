"""The gateway's secret sources (api/gateway/secrets.py), each with real components.

Environment variables and files are real; commands are scripts written here and run; AWS
Secrets Manager is boto3 talking to moto's server on 127.0.0.1. Every failure is checked
for the secret: not in the exception's text, repr or traceback, nor in any log record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import sys
import threading
import time
import tomllib
import traceback
import uuid
from pathlib import Path

import pytest

from lineage.api.gateway.secrets import (
    Secret,
    SecretCache,
    SecretError,
    SecretSpec,
    parse_secret_spec,
)
from tests.conftest import FixedClock

WHERE = "gateway.upstreams.mail.secret"
SECRET = "sk-live-7f3c9a1e5b"  # what each source holds; it must never show anywhere else


@pytest.fixture(autouse=True)
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)  # every level, botocore's response bodies included
    return caplog


def assert_hidden(exc: BaseException, caplog, *values: str) -> None:
    """None of ``values`` in the exception (text, repr, traceback) or logs; no chained cause
    either (a UnicodeDecodeError would quote a byte of the secret)."""
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), caplog.text]
    shown += [record.getMessage() for record in caplog.records]
    for value in values or (SECRET,):
        for text in shown:
            assert value not in text


def failure(cache: SecretCache, caplog, *values: str) -> str:
    """The SecretError a get raises, checked for the secret; its message."""
    with pytest.raises(SecretError) as info:
        cache.get()
    assert_hidden(info.value, caplog, *values)
    return str(info.value)


def script(tmp_path: Path, body: str, name: str = "secret-tool") -> Path:
    """An executable shell script in tmp_path."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o700)
    return path


def command(argv, **fields) -> SecretCache:
    return SecretCache(SecretSpec("command", command=tuple(map(str, argv)), **fields))


# ---------------------------------------------------------------------------------------------
# parse_secret_spec


def test_parse_the_four_sources_from_toml():
    document = tomllib.loads(
        """
        [env]
        from = "env"
        name = "MAIL_API_KEY"
        [file]
        from = "file"
        path = "/run/secrets/mail"
        ttl = 60
        [command]
        from = "command"
        command = ["vault", "kv", "get", "-field=key", "secret/mail"]
        timeout = 2.5
        [aws]
        from = "aws"
        secret_id = "mail/api-key"
        region = "eu-west-1"
        endpoint_url = "https://secretsmanager.eu-west-1.amazonaws.com"
        field = "key"
        ttl = 0
        """
    )
    specs = {name: parse_secret_spec(table, f"{WHERE}.{name}") for name, table in document.items()}
    assert specs["env"] == SecretSpec("env", name="MAIL_API_KEY")
    assert specs["file"] == SecretSpec("file", path="/run/secrets/mail", ttl=60.0)
    assert specs["command"].command == ("vault", "kv", "get", "-field=key", "secret/mail")
    assert (specs["command"].timeout, specs["command"].ttl) == (2.5, 300.0)
    aws = specs["aws"]
    assert (aws.secret_id, aws.region, aws.field, aws.ttl) == (
        "mail/api-key",
        "eu-west-1",
        "key",
        0,
    )
    assert [spec.describe() for spec in specs.values()] == [
        "env MAIL_API_KEY",
        "file /run/secrets/mail",
        "command vault",  # argv[0] only: the arguments may carry a token
        "aws mail/api-key",
    ]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, f"{WHERE}.from: missing"),
        ({"from": "vault"}, f"{WHERE}.from: 'vault' is not one of env, file, command, aws"),
        ({"from": "env"}, f"{WHERE}.name: missing"),
        ({"from": "env", "name": 3}, f"{WHERE}.name: expected a string, not int"),
        ({"from": "env", "name": ""}, f"{WHERE}.name: must not be empty"),
        ({"from": "env", "name": "K", "path": "/x"}, f"{WHERE}.path: unknown key for from = 'env'"),
        ({"from": "env", "name": "K", "value": "sk"}, f"{WHERE}.value: unknown key"),
        ({"from": "env", "name": "K", "ttl": True}, f"{WHERE}.ttl: expected a number"),
        ({"from": "env", "name": "K", "ttl": "5m"}, f"{WHERE}.ttl: expected a number"),
        ({"from": "env", "name": "K", "ttl": -1}, f"{WHERE}.ttl: must be a finite number"),
        ({"from": "env", "name": "K", "ttl": float("inf")}, f"{WHERE}.ttl: must be a finite"),
        ({"from": "file"}, f"{WHERE}.path: missing"),
        ({"from": "file", "path": ["/a"]}, f"{WHERE}.path: expected a string, not list"),
        ({"from": "command"}, f"{WHERE}.command: missing"),
        ({"from": "command", "command": []}, f"{WHERE}.command: must not be empty"),
        ({"from": "command", "command": ["vault", 1]}, f"{WHERE}.command[1]: expected a string"),
        ({"from": "command", "command": [""]}, f"{WHERE}.command[0]: must not be empty"),
        ({"from": "command", "command": ["x"], "timeout": 0}, f"{WHERE}.timeout: must be"),
        ({"from": "command", "command": ["x"], "timeout": "9"}, f"{WHERE}.timeout: expected"),
        ({"from": "aws"}, f"{WHERE}.secret_id: missing"),
        ({"from": "aws", "secret_id": "a", "field": 5}, f"{WHERE}.field: expected a string"),
        ({"from": "aws", "secret_id": "a", "region": None}, f"{WHERE}.region: expected a string"),
        ({"from": "aws", "secret_id": "a", "endpoint_url": "localhost:4566"}, "endpoint_url: must"),
        ({"from": "aws", "secret_id": "a", "timeout": 5}, f"{WHERE}.timeout: unknown key"),
        (["env", "MAIL_API_KEY"], f"{WHERE}: expected a table"),
    ],
)
def test_parse_refusals_name_the_field(table, message):
    with pytest.raises(ValueError) as info:
        parse_secret_spec(table, WHERE)
    assert message in str(info.value)


def test_parse_refuses_a_shell_string_and_says_to_use_a_list():
    with pytest.raises(ValueError) as info:
        parse_secret_spec({"from": "command", "command": "vault kv get secret/mail"}, WHERE)
    message = str(info.value)
    assert f"{WHERE}.command: must be a list of strings" in message
    assert "['vault', 'kv', 'get', 'secret/mail']" in message


def test_a_spec_built_in_code_is_checked_too():
    for fields, message in [
        ({"source": "ssm"}, "unknown secret source"),
        ({"source": "env"}, "needs name"),
        ({"source": "command", "command": "vault kv"}, "not a shell string"),
        ({"source": "file", "path": "/x", "ttl": -5}, "ttl"),
    ]:
        with pytest.raises(ValueError, match=message):
            SecretSpec(**fields)


# ---------------------------------------------------------------------------------------------
# Secret


def test_a_secret_never_shows_its_value():
    secret = Secret(SECRET)
    assert secret.reveal() == SECRET
    shown = [
        str(secret),
        repr(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret:>40}",
        format(secret, "s"),
    ]
    shown.append(str({"auth": secret}))
    assert all(SECRET not in text for text in shown)
    assert repr(secret) == "Secret('***')"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


# ---------------------------------------------------------------------------------------------
# env


def test_env_reads_the_variable_from_the_environment(monkeypatch, caplog):
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", SECRET)
    cache = SecretCache(parse_secret_spec({"from": "env", "name": "LINEAGE_TEST_MAIL_KEY"}, WHERE))
    assert cache.get().reveal() == SECRET
    assert cache.reads == 1
    assert SECRET not in caplog.text


def test_env_must_be_set_non_empty_and_printable(caplog):
    spec = SecretSpec("env", name="MAIL_API_KEY")
    assert "env MAIL_API_KEY: the variable is not set" in failure(SecretCache(spec, env={}), caplog)
    empty = SecretCache(spec, env={"MAIL_API_KEY": ""})
    assert "env MAIL_API_KEY: the variable is empty" in failure(empty, caplog)
    for bad in (SECRET + "\n", SECRET + "\r\nX-Injected: 1", SECRET + "\0"):
        cache = SecretCache(spec, env={"MAIL_API_KEY": bad})
        assert "control character" in failure(cache, caplog, SECRET, "X-Injected")


# ---------------------------------------------------------------------------------------------
# file


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_file_strips_one_trailing_newline(tmp_path, ending):
    path = tmp_path / "mail"
    path.write_bytes(SECRET.encode() + ending)
    path.chmod(0o600)
    assert SecretCache(SecretSpec("file", path=str(path))).get().reveal() == SECRET


def test_file_readable_by_others_is_allowed_as_kubernetes_mounts_it(tmp_path):
    # a mounted secret: mail -> ..data/mail -> ..2026_01_01/mail, mode 0644
    version = tmp_path / "..2026_01_01"
    version.mkdir()
    (version / "mail").write_text(SECRET + "\n")
    (version / "mail").chmod(0o644)
    (tmp_path / "..data").symlink_to(version.name)
    (tmp_path / "mail").symlink_to("..data/mail")
    assert SecretCache(SecretSpec("file", path=str(tmp_path / "mail"))).get().reveal() == SECRET


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o620])
def test_file_writable_by_group_or_others_is_refused(tmp_path, caplog, mode):
    path = tmp_path / "mail"
    path.write_text(SECRET)
    path.chmod(mode)
    message = failure(SecretCache(SecretSpec("file", path=str(path))), caplog)
    assert f"file {path}: refused, writable by group or others (mode {mode:04o})" in message
    assert f"chmod go-w {path}" in message


def test_file_failures_name_the_path_and_the_cause(tmp_path, caplog):
    def read(path: Path) -> str:
        return failure(SecretCache(SecretSpec("file", path=str(path))), caplog)

    assert read(tmp_path / "absent") == f"file {tmp_path / 'absent'}: no such file"
    assert read(tmp_path) == f"file {tmp_path}: not a regular file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    assert read(fifo) == f"file {fifo}: not a regular file"  # refused, not waited on

    cases = {
        "empty": (b"", "the file is empty"),
        "newline-only": (b"\n", "the file is empty"),
        "two-newlines": (SECRET.encode() + b"\n\n", "control character"),  # one stripped only
        "inner-newline": (SECRET.encode() + b"\nX-Injected: 1\n", "control character"),
        "nul": (SECRET.encode() + b"\0", "control character"),
        "latin-1": (SECRET.encode() + b"\xe9t\xe9", "the file is not UTF-8"),
        "huge": (SECRET.encode() * 5000, "larger than 65536 bytes"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        path.chmod(0o600)
        assert message in read(path), name


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_not_readable(tmp_path, caplog):
    path = tmp_path / "mail"
    path.write_text(SECRET)
    path.chmod(0o000)
    cache = SecretCache(SecretSpec("file", path=str(path)))
    assert failure(cache, caplog) == f"file {path}: permission denied"


# ---------------------------------------------------------------------------------------------
# command


def test_command_prints_the_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEAGE_TEST_VAULT_PATH", "secret/mail")  # the environment is inherited
    tool = script(
        tmp_path,
        'test "$1 $LINEAGE_TEST_VAULT_PATH" = "get secret/mail" || exit 9\n'
        f"printf '%s\\r\\n' '{SECRET}'\n",
    )
    cache = command([tool, "get"])
    assert cache.get().reveal() == SECRET
    assert cache.spec.describe() == f"command {tool}"


def test_command_runs_without_a_shell_and_with_stdin_closed(tmp_path):
    python = tmp_path / "tool.py"
    python.write_text("import sys\nassert sys.stdin.read() == ''\nprint(sys.argv[1])\n")
    cache = command([sys.executable, python, "$HOME; echo injected"])
    assert cache.get().reveal() == "$HOME; echo injected"


def test_command_exiting_non_zero_names_argv0_and_status_not_stderr(tmp_path, caplog, capfd):
    tool = script(tmp_path, f"echo 'token {SECRET} rejected' >&2\necho '{SECRET}'\nexit 3\n")
    cache = command([tool, "--token", "tok-in-argument"])
    message = failure(cache, caplog, SECRET, "tok-in-argument")
    assert message == f"command {tool}: exited with status 3"
    assert SECRET not in "".join(capfd.readouterr())  # stderr not passed through either


def test_command_past_its_timeout_is_killed_with_what_it_started(tmp_path, caplog):
    pidfile = tmp_path / "child.pid"
    tool = script(tmp_path, f"echo '{SECRET}' >&2\nsleep 30 &\necho $! > {pidfile}\nwait\n")
    cache = command([tool], timeout=0.5)
    started = time.monotonic()
    assert failure(cache, caplog) == f"command {tool}: timed out after 0.5 s, killed"
    assert time.monotonic() - started < 5
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child), "the command's own child outlived the timeout"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, whether or not its parent reaped it


def test_command_failures_name_the_program_and_the_cause(tmp_path, caplog):
    cases = {
        "printf ''\n": "printed nothing",
        "echo\n": "printed nothing",
        f"printf '{SECRET}\\n\\n'\n": "control character",
        f"printf '{SECRET}\\nX-Injected: 1'\n": "control character",
        f"printf '{SECRET}\\000'\n": "control character",
        f"printf '{SECRET}\\351'\n": "the output is not UTF-8",
        f"echo '{SECRET}'\nkill -TERM $$\n": "killed by signal 15",
    }
    for i, (body, message) in enumerate(cases.items()):
        tool = script(tmp_path, body, f"tool-{i}")
        said = failure(command([tool]), caplog, SECRET, "X-Injected")
        assert said.startswith(f"command {tool}: ") and message in said, (body, said)
    absent = tmp_path / "no-such-tool"
    assert failure(command([absent]), caplog) == f"command {absent}: no such program"
    plain = tmp_path / "not-executable"
    plain.write_text(f"#!/bin/sh\necho {SECRET}\n")
    plain.chmod(0o600)
    assert "permission denied" in failure(command([plain]), caplog)


def counter_script(tmp_path: Path, fail_after: int | None = None) -> tuple[Path, Path]:
    """A tool that prints SECRET-<n> on its n-th run (and fails from run fail_after + 1)."""
    count = tmp_path / "count"
    count.write_text("0")
    fail = "" if fail_after is None else f'[ "$n" -gt {fail_after} ] && exit 1\n'
    body = f'n=$(( $(cat {count}) + 1 ))\necho $n > {count}\n{fail}echo "{SECRET}-$n"\n'
    return script(tmp_path, body), count


def test_ttl_and_invalidate_read_again(tmp_path):
    tool, count = counter_script(tmp_path)
    clock = FixedClock(1000.0)
    cache = SecretCache(SecretSpec("command", command=(str(tool),), ttl=30), clock=clock)
    assert cache.get().reveal() == f"{SECRET}-1"
    clock.now += 29.9
    assert cache.get().reveal() == f"{SECRET}-1"  # still fresh: not read again
    assert (cache.reads, count.read_text().strip()) == (1, "1")
    clock.now += 0.1
    assert cache.get().reveal() == f"{SECRET}-2"  # ttl is up: read again
    assert cache.get().reveal() == f"{SECRET}-2"
    cache.invalidate()  # the upstream said 401
    assert cache.get().reveal() == f"{SECRET}-3"
    assert cache.reads == 3


def test_ttl_zero_reads_every_time(tmp_path):
    tool, _ = counter_script(tmp_path)
    cache = SecretCache(SecretSpec("command", command=(str(tool),), ttl=0), clock=FixedClock())
    assert [cache.get().reveal() for _ in range(3)] == [f"{SECRET}-{n}" for n in (1, 2, 3)]


def test_a_failed_read_after_expiry_fails_closed(tmp_path, caplog):
    tool, _ = counter_script(tmp_path, fail_after=1)
    clock = FixedClock(1000.0)
    cache = SecretCache(SecretSpec("command", command=(str(tool),), ttl=30), clock=clock)
    assert cache.get().reveal() == f"{SECRET}-1"
    caplog.clear()
    clock.now += 31
    for _ in range(2):  # the expired value is not served, however often asked
        assert failure(cache, caplog, SECRET) == f"command {tool}: exited with status 1"
    assert cache.reads == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings][-1] == (
        f"secret command {tool}: read failed: command {tool}: exited with status 1"
    )


def slow_counter(tmp_path: Path, seconds: float, status: int = 0) -> tuple[Path, Path]:
    count = tmp_path / "count"
    count.write_text("")
    body = f"echo x >> {count}\nsleep {seconds}\necho '{SECRET}'\nexit {status}\n"
    return script(tmp_path, body), count


def test_threads_arriving_during_a_read_share_it(tmp_path, caplog):
    for status in (0, 4):  # a value is shared, and so is an error
        tool, count = slow_counter(tmp_path, 0.3, status)
        cache = command([tool])
        start, results = threading.Barrier(8), []

        def call(cache=cache, start=start, results=results):
            start.wait()
            try:
                results.append(cache.get().reveal())
            except SecretError as error:
                results.append(error)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert (cache.reads, count.read_text().count("x")) == (1, 1)
        if status == 0:
            assert results == [SECRET] * 8
        else:
            assert {str(r) for r in results} == {f"command {tool}: exited with status 4"}
            for exc in results:
                assert_hidden(exc, caplog)


# ---------------------------------------------------------------------------------------------
# async


def test_aget_shares_one_read_and_leaves_the_loop_free(tmp_path):
    tool, count = slow_counter(tmp_path, 0.4)
    cache = command([tool])

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(ticker())
        secrets = await asyncio.gather(*(cache.aget() for _ in range(20)))
        done.set()
        await beat
        again = await cache.aget()  # fresh: no read, no thread
        return secrets, again, ticks

    secrets, again, ticks = asyncio.run(main())
    assert {s.reveal() for s in secrets} == {SECRET} and again.reveal() == SECRET
    assert (cache.reads, count.read_text().count("x")) == (1, 1)
    assert ticks >= 10  # the loop kept running while the command slept 0.4 s


def test_aget_shares_a_failure_and_survives_a_cancelled_caller(tmp_path, caplog):
    tool, count = slow_counter(tmp_path, 0.3, status=5)
    cache = command([tool])

    async def main():
        first = asyncio.create_task(cache.aget())
        others = [asyncio.create_task(cache.aget()) for _ in range(5)]
        await asyncio.sleep(0.05)
        first.cancel()  # one caller gives up: the read goes on for the others
        return await asyncio.gather(first, *others, return_exceptions=True)

    first, *others = asyncio.run(main())
    assert isinstance(first, asyncio.CancelledError)
    assert {str(e) for e in others} == {f"command {tool}: exited with status 5"}
    for exc in others:
        assert isinstance(exc, SecretError)
        assert_hidden(exc, caplog)
    assert (cache.reads, count.read_text().count("x")) == (1, 1)


def test_aget_after_invalidate_reads_again(tmp_path):
    tool, _ = counter_script(tmp_path)
    cache = command([tool])

    async def main():
        first = await cache.aget()
        cache.invalidate()
        return first, await cache.aget(), await cache.aget()

    assert [s.reveal() for s in asyncio.run(main())] == [f"{SECRET}-{n}" for n in (1, 2, 2)]


# ---------------------------------------------------------------------------------------------
# aws: boto3 against moto's Secrets Manager, served on 127.0.0.1


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_endpoint, monkeypatch, tmp_path):
    """The endpoint, with dummy credentials in this test's environment and no one else's."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_endpoint


def admin(endpoint: str):
    import boto3

    return boto3.session.Session().client(
        "secretsmanager", region_name="eu-west-1", endpoint_url=endpoint
    )


def unique(name: str) -> str:
    return f"{name}/{uuid.uuid4().hex[:8]}"


def test_aws_secret_string(aws, caplog):
    secret_id = unique("mail/api-key")
    admin(aws).create_secret(Name=secret_id, SecretString=SECRET)
    caplog.clear()
    cache = SecretCache(
        SecretSpec("aws", secret_id=secret_id, region="eu-west-1", endpoint_url=aws)
    )
    assert cache.get().reveal() == SECRET
    assert cache.spec.describe() == f"aws {secret_id}"
    # botocore logs response bodies at DEBUG; the GetSecretValue one is dropped
    assert any(r.name.startswith("botocore") for r in caplog.records)
    assert SECRET not in caplog.text


def test_aws_secret_binary(aws):
    secret_id = unique("mail/binary")
    admin(aws).create_secret(Name=secret_id, SecretBinary=SECRET.encode())
    spec = SecretSpec("aws", secret_id=secret_id, region="eu-west-1", endpoint_url=aws)
    assert SecretCache(spec).get().reveal() == SECRET


def test_aws_json_field(aws, caplog):
    secret_id = unique("mail/json")
    document = f'{{"key": "{SECRET}", "port": 587, "user": "mailer"}}'
    admin(aws).create_secret(Name=secret_id, SecretString=document)
    caplog.clear()  # botocore logged the admin's request, secret and all

    def cache(field: str) -> SecretCache:
        spec = SecretSpec(
            "aws", secret_id=secret_id, region="eu-west-1", endpoint_url=aws, field=field
        )
        return SecretCache(spec)

    assert cache("key").get().reveal() == SECRET
    assert failure(cache("port"), caplog) == (
        f"aws {secret_id}: field 'port' is a int, not a string"
    )
    assert (
        failure(cache("password"), caplog) == f"aws {secret_id}: no field 'password' in the secret"
    )

    plain_id = unique("mail/plain")
    admin(aws).create_secret(Name=plain_id, SecretString=SECRET)
    caplog.clear()
    spec = SecretSpec("aws", secret_id=plain_id, region="eu-west-1", endpoint_url=aws, field="key")
    assert "not a JSON object" in failure(SecretCache(spec), caplog)


def test_aws_missing_secret_names_the_id_and_the_code(aws, caplog):
    secret_id = unique("mail/never-created")
    spec = SecretSpec("aws", secret_id=secret_id, region="eu-west-1", endpoint_url=aws)
    with pytest.raises(SecretError) as info:
        SecretCache(spec).get()
    assert str(info.value) == (
        f"aws {secret_id}: Secrets Manager answered ResourceNotFoundException"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no botocore chain
    assert_hidden(info.value, caplog)


def test_aws_rotation_is_read_once_the_ttl_is_up(aws, caplog):
    secret_id = unique("mail/rotated")
    admin(aws).create_secret(Name=secret_id, SecretString=f"{SECRET}-v1")
    clock = FixedClock(1000.0)
    spec = SecretSpec("aws", secret_id=secret_id, region="eu-west-1", endpoint_url=aws, ttl=60)
    cache = SecretCache(spec, clock=clock)
    assert cache.get().reveal() == f"{SECRET}-v1"

    admin(aws).put_secret_value(SecretId=secret_id, SecretString=f"{SECRET}-v2")  # rotated
    clock.now += 59
    assert cache.get().reveal() == f"{SECRET}-v1"  # cached until the ttl is up
    clock.now += 1
    assert cache.get().reveal() == f"{SECRET}-v2"
    assert cache.reads == 2

    admin(aws).delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)
    caplog.clear()
    clock.now += 60
    assert "ResourceNotFoundException" in failure(cache, caplog, SECRET)  # no stale -v2


def test_aws_without_boto3_says_what_to_install(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` raises ImportError
    monkeypatch.setitem(sys.modules, "boto3.session", None)
    cache = SecretCache(SecretSpec("aws", secret_id="mail/api-key", region="eu-west-1"))
    assert failure(cache, caplog) == (
        "aws mail/api-key: the aws source needs boto3: pip install 'lineage-ledger[aws]'"
    )
