"""Where the gateway gets the real API secrets it attaches to forwarded requests.

A secret comes from one of four sources, each a TOML table under an upstream's ``secret`` key:

* ``{from = "env", name = "MAIL_API_KEY"}``: an environment variable, set and non-empty.
* ``{from = "file", path = "/run/secrets/mail"}``: a file's UTF-8 text, one trailing newline
  stripped. A file that group or others may write is refused: whoever can write it could swap
  the secret. Readable by others is allowed (mounted Kubernetes secrets are 0644).
* ``{from = "command", command = ["vault", "kv", "get", "-field=key", "secret/mail"]}``: what
  the command prints, one trailing newline stripped. An argv list, never a shell string; stdin
  closed, stderr discarded (it might hold the secret), the environment inherited, killed with
  its process group after ``timeout`` seconds (10 by default).
* ``{from = "aws", secret_id = "mail/api-key", region = "eu-west-1"}``: AWS Secrets Manager's
  ``SecretString`` (or ``SecretBinary`` as UTF-8), or with ``field = "key"`` that key of it
  parsed as a JSON object. Needs boto3 (``pip install 'lineage-ledger[aws]'``), imported only
  when such a secret is read. ``endpoint_url`` points elsewhere (a VPC endpoint, a test server).

Every table may also set ``ttl``, the seconds a read value is reused (300 by default).
:class:`SecretCache` reads on first use, again once the value is older than ``ttl``, and after
:meth:`SecretCache.invalidate` (the upstream said 401). A read that fails raises
:class:`SecretError`; an expired value is never served instead (fail closed).

A value must be non-empty and hold no control character (a newline inside would break the
header it goes into). It travels as a :class:`Secret`, which prints as ``***``; only
:meth:`Secret.reveal` gives it. No message, exception or log line of this module holds a secret,
a command's output or its stderr: they name the source (:meth:`SecretSpec.describe`) and the
cause only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import stat
import subprocess
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "SOURCES",
    "Secret",
    "SecretCache",
    "SecretError",
    "SecretSpec",
    "parse_secret_spec",
]

log = logging.getLogger(__name__)

SOURCES = ("env", "file", "command", "aws")
DEFAULT_TTL = 300.0
DEFAULT_TIMEOUT = 10.0
MAX_BYTES = 64 * 1024  # a secret that goes into a header; anything larger is a mistake


class SecretError(Exception):
    """A secret could not be read.

    The message names the source (env var name, file path, command's argv[0], AWS secret id)
    and the cause, never the secret, a command's output or its stderr.
    """


@dataclass(frozen=True)
class SecretSpec:
    """Where one secret comes from; :func:`parse_secret_spec` makes one from a TOML table."""

    source: str  # "env" | "file" | "command" | "aws"
    name: str | None = None  # env: the variable
    path: str | None = None  # file
    command: tuple[str, ...] = ()  # command: argv, run without a shell
    timeout: float = DEFAULT_TIMEOUT  # command: seconds before it is killed; aws: read timeout
    secret_id: str | None = None  # aws
    region: str | None = None  # aws; None: boto3's own configuration (AWS_REGION, ...)
    endpoint_url: str | None = None  # aws; None: the region's public endpoint
    field: str | None = None  # aws: a key of the SecretString parsed as a JSON object
    ttl: float = DEFAULT_TTL  # seconds a read value is reused before it is read again

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown secret source {self.source!r}; one of {', '.join(SOURCES)}")
        needed = {"env": "name", "file": "path", "command": "command", "aws": "secret_id"}
        if not getattr(self, needed[self.source]):
            raise ValueError(f"a {self.source} secret needs {needed[self.source]}")
        if isinstance(self.command, str) or not all(isinstance(a, str) for a in self.command):
            raise ValueError("command must be a sequence of strings (argv), not a shell string")
        object.__setattr__(self, "command", tuple(self.command))
        if not (math.isfinite(self.ttl) and self.ttl >= 0):
            raise ValueError(f"ttl must be a finite number of seconds >= 0, not {self.ttl!r}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, not {self.timeout}")

    def describe(self) -> str:
        """The source in a few words, safe to log: ``env MAIL_API_KEY``, ``command vault``."""
        if self.source == "env":
            return f"env {self.name}"
        if self.source == "file":
            return f"file {self.path}"
        if self.source == "command":
            return f"command {self.command[0]}"  # argv[0] only: arguments may hold tokens
        return f"aws {self.secret_id}"


# ---------------------------------------------------------------------------------------------
# Parsing a TOML table


_KEYS: dict[str, dict[str, bool]] = {  # per source: key -> required
    "env": {"name": True},
    "file": {"path": True},
    "command": {"command": True, "timeout": False},
    "aws": {"secret_id": True, "region": False, "endpoint_url": False, "field": False},
}


def parse_secret_spec(table: Mapping[str, Any], where: str) -> SecretSpec:
    """A :class:`SecretSpec` from a TOML table found at ``where`` (e.g. ``gateway.upstreams.
    mail.secret``); ValueError naming ``where`` and the key on anything unknown, missing or of
    the wrong type.
    """
    if not isinstance(table, Mapping):
        raise ValueError(f'{where}: expected a table such as {{from = "env", name = "..."}}')
    for key in table:
        if not isinstance(key, str):
            raise ValueError(f"{where}: keys must be strings, not {key!r}")
    if "from" not in table:
        raise ValueError(f"{where}.from: missing (one of {', '.join(SOURCES)})")
    source = table["from"]
    if source not in SOURCES:
        raise ValueError(f"{where}.from: {source!r} is not one of {', '.join(SOURCES)}")
    allowed = _KEYS[source]
    for key in table:
        if key not in allowed and key not in ("from", "ttl"):
            known = ", ".join(["from", *allowed, "ttl"])
            raise ValueError(f"{where}.{key}: unknown key for from = {source!r} (known: {known})")
    for key, required in allowed.items():
        if required and key not in table:
            raise ValueError(f"{where}.{key}: missing (from = {source!r} needs it)")

    fields: dict[str, Any] = {"source": source}
    for key in allowed.keys() & {"name", "path", "secret_id", "region", "endpoint_url", "field"}:
        if key in table:
            fields[key] = _string(table[key], f"{where}.{key}")
    if source == "command":
        fields["command"] = _argv(table["command"], f"{where}.command")
        if "timeout" in table:
            fields["timeout"] = _seconds(table["timeout"], f"{where}.timeout", zero=False)
    url = fields.get("endpoint_url")
    if url is not None and not url.startswith(("https://", "http://")):
        raise ValueError(f"{where}.endpoint_url: must be an http:// or https:// URL")
    if "ttl" in table:
        fields["ttl"] = _seconds(table["ttl"], f"{where}.ttl", zero=True)
    return SecretSpec(**fields)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{where}: must not be empty")
    if _has_control(value):
        raise ValueError(f"{where}: must not contain control characters")
    return value


def _argv(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError(
            f"{where}: must be a list of strings (argv, run without a shell), not a string: "
            f"write {value.split()!r} instead of {value!r}"
        )
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}: expected a list of strings, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{where}: must not be empty (argv[0] is the program)")
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            raise ValueError(f"{where}[{i}]: expected a string, not {type(arg).__name__}")
        if "\0" in arg:
            raise ValueError(f"{where}[{i}]: must not contain NUL")
    if not value[0]:
        raise ValueError(f"{where}[0]: must not be empty (it is the program)")
    return tuple(value)


def _seconds(value: Any, where: str, *, zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: expected a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{where}: must be a finite number of seconds {'>=' if zero else '>'} 0")
    return float(value)


# ---------------------------------------------------------------------------------------------
# The value


class Secret:
    """A secret value; ``str()``, ``repr()`` and ``format()`` show ``***``, never the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one place that attaches it to a request."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __reduce__(self) -> Any:  # pickling would write the value out
        raise TypeError("a Secret cannot be pickled")


# ---------------------------------------------------------------------------------------------
# Reading


def read_secret(spec: SecretSpec, env: Mapping[str, str] | None = None) -> str:
    """Read the secret now, from its source; SecretError if it cannot be.

    Blocking (a command may run for ``spec.timeout`` seconds): call it off the event loop.
    """
    readers: dict[str, Callable[[SecretSpec, Mapping[str, str]], str]] = {
        "env": _read_env,
        "file": _read_file,
        "command": _read_command,
        "aws": _read_aws,
    }
    value = readers[spec.source](spec, os.environ if env is None else env)
    if not value:
        raise SecretError(f"{spec.describe()}: the value is empty")
    if _has_control(value):
        raise SecretError(
            f"{spec.describe()}: the value contains a control character (a newline, CR or NUL "
            "inside, say); it cannot go into a header"
        )
    return value


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def _strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def _utf8(data: bytes, spec: SecretSpec, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # not chained: the decode error names the offending byte, a byte of the secret
        raise SecretError(f"{spec.describe()}: {what} is not UTF-8") from None


def _read_env(spec: SecretSpec, env: Mapping[str, str]) -> str:
    assert spec.name is not None
    value = env.get(spec.name)
    if value is None:
        raise SecretError(f"{spec.describe()}: the variable is not set")
    if not value:
        raise SecretError(f"{spec.describe()}: the variable is empty")
    return value


def _read_file(spec: SecretSpec, env: Mapping[str, str]) -> str:
    assert spec.path is not None
    where = spec.describe()
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(spec.path, flags)  # O_NONBLOCK: a FIFO is refused below, not waited on
    except FileNotFoundError:
        raise SecretError(f"{where}: no such file") from None
    except PermissionError:
        raise SecretError(f"{where}: permission denied") from None
    except OSError as exc:
        raise SecretError(f"{where}: cannot open ({exc.strerror})") from None
    try:
        info = os.fstat(fd)  # the file opened, not whatever the path names a moment later
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"{where}: not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise SecretError(
                f"{where}: refused, writable by group or others (mode {mode:04o}); whoever can "
                f"write it could swap the secret: chmod go-w {spec.path}"
            )
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SecretError(f"{where}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        raise SecretError(f"{where}: larger than {MAX_BYTES} bytes")
    data = _strip_newline(b"".join(chunks))
    if not data:
        raise SecretError(f"{where}: the file is empty")
    return _utf8(data, spec, "the file")


def _read_command(spec: SecretSpec, env: Mapping[str, str]) -> str:
    where = spec.describe()
    try:
        proc = subprocess.Popen(
            spec.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # it may hold the secret: neither kept nor logged
            start_new_session=True,  # its own process group, killed whole on timeout
            close_fds=True,
        )
    except FileNotFoundError:
        raise SecretError(f"{where}: no such program") from None
    except PermissionError:
        raise SecretError(f"{where}: permission denied (not executable?)") from None
    except OSError as exc:
        raise SecretError(f"{where}: cannot run ({exc.strerror})") from None
    try:
        out, _ = proc.communicate(timeout=spec.timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise SecretError(f"{where}: timed out after {spec.timeout:g} s, killed") from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode < 0:
        raise SecretError(f"{where}: killed by signal {-proc.returncode}")
    if proc.returncode != 0:
        raise SecretError(f"{where}: exited with status {proc.returncode}")
    if len(out) > MAX_BYTES:
        raise SecretError(f"{where}: printed more than {MAX_BYTES} bytes")
    data = _strip_newline(out)
    if not data:
        raise SecretError(f"{where}: printed nothing")
    return _utf8(data, spec, "the output")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and anything it started
    except OSError:
        proc.kill()
    if proc.stdout is not None:
        proc.stdout.close()  # a descendant that left the group must not keep us waiting
    proc.wait()


_botocore_filtered = False
_botocore_lock = threading.Lock()


class _NoSecretBodies(logging.Filter):
    """botocore logs every response body at DEBUG; for GetSecretValue that body is the secret."""

    MARKERS = ('"SecretString"', '"SecretBinary"')

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        for arg in (record.msg, *args):
            text = arg.decode("utf-8", "replace") if isinstance(arg, bytes | bytearray) else arg
            if isinstance(text, str) and any(m in text for m in self.MARKERS):
                return False
        return True


def _filter_botocore_logs() -> None:
    global _botocore_filtered
    with _botocore_lock:
        if not _botocore_filtered:
            logging.getLogger("botocore.parsers").addFilter(_NoSecretBodies())
            _botocore_filtered = True


def _read_aws(spec: SecretSpec, env: Mapping[str, str]) -> str:
    where = spec.describe()
    try:
        import boto3.session
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise SecretError(
            f"{where}: the aws source needs boto3: pip install 'lineage-ledger[aws]'"
        ) from None
    _filter_botocore_logs()
    config = Config(
        connect_timeout=min(spec.timeout, 5.0),
        read_timeout=spec.timeout,
        retries={"mode": "standard", "max_attempts": 3},
    )
    try:
        client = boto3.session.Session().client(  # a session per read: thread-safe
            "secretsmanager",
            region_name=spec.region,
            endpoint_url=spec.endpoint_url,
            config=config,
        )
    except ValueError as exc:  # an endpoint_url botocore refuses: the message is about it
        raise SecretError(f"{where}: {exc}") from None
    except BotoCoreError as exc:  # NoRegionError, ...
        raise SecretError(f"{where}: {type(exc).__name__}") from None
    try:
        response = client.get_secret_value(SecretId=spec.secret_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code") or "an error"
        raise SecretError(f"{where}: Secrets Manager answered {code}") from None
    except BotoCoreError as exc:  # the class only: some messages quote the response body
        raise SecretError(f"{where}: {type(exc).__name__}") from None
    if isinstance(response.get("SecretString"), str):
        text = response["SecretString"]
    elif isinstance(response.get("SecretBinary"), bytes | bytearray):
        text = _utf8(bytes(response["SecretBinary"]), spec, "SecretBinary")
    else:
        raise SecretError(f"{where}: the secret has neither SecretString nor SecretBinary")
    if spec.field is None:
        return text
    try:
        document = json.loads(text)
    except ValueError:
        raise SecretError(
            f"{where}: not a JSON object, so it has no field {spec.field!r}"
        ) from None
    if not isinstance(document, dict):
        raise SecretError(f"{where}: not a JSON object, so it has no field {spec.field!r}")
    if spec.field not in document:
        raise SecretError(f"{where}: no field {spec.field!r} in the secret")
    value = document[spec.field]
    if not isinstance(value, str):
        raise SecretError(
            f"{where}: field {spec.field!r} is a {type(value).__name__}, not a string"
        )
    return value


# ---------------------------------------------------------------------------------------------
# Caching


class _Entry(NamedTuple):
    secret: Secret
    read_at: float  # clock() when the read began: the value is at least that old
    generation: int  # invalidate() moves the cache to the next generation


class SecretCache:
    """One secret, read from its source when first needed and again once ``spec.ttl`` is up.

    Thread-safe. Callers that arrive while a read is under way wait for it and share its
    result, value or error. A failed read is not cached, and an expired value is never served
    instead of a failed read. ``reads`` counts reads of the source, failed ones included.
    """

    def __init__(
        self,
        spec: SecretSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.reads = 0
        self._clock = clock
        self._env = os.environ if env is None else env
        self._state = threading.Lock()  # held briefly, never during a read
        self._reading = threading.Lock()  # held through a read: one at a time
        self._entry: _Entry | None = None
        self._generation = 0
        self._completed = 0  # reads finished, failed or not
        self._last_error: SecretError | None = None  # the last finished read's, if it failed
        self._inflight: tuple[asyncio.AbstractEventLoop, int, asyncio.Future[Secret]] | None = None

    def __repr__(self) -> str:
        return f"SecretCache({self.spec.describe()!r}, ttl={self.spec.ttl:g})"

    def _fresh(self) -> Secret | None:
        with self._state:
            entry = self._entry
            if entry is None:
                return None
            age = self._clock() - entry.read_at
            if entry.generation == self._generation and age < self.spec.ttl:
                return entry.secret
            self._entry = None  # expired or invalidated: not kept, never served
            return None

    def get(self) -> Secret:
        """The secret: the cached value while fresh, else read now (blocking); SecretError."""
        secret = self._fresh()
        if secret is not None:
            return secret
        with self._state:
            seen = self._completed
        with self._reading:
            secret = self._fresh()  # read by another caller while we waited
            if secret is not None:
                return secret
            with self._state:
                if self._completed != seen and self._last_error is not None:
                    # a read that ended while we waited failed: share its error, do not retry
                    raise SecretError(str(self._last_error)) from None
                self.reads += 1
                generation = self._generation
            started = self._clock()
            try:
                value = read_secret(self.spec, self._env)
            except SecretError as exc:
                with self._state:
                    self._completed += 1
                    self._last_error = exc
                log.warning("secret %s: read failed: %s", self.spec.describe(), exc)
                raise
            secret = Secret(value)
            with self._state:
                self._completed += 1
                self._last_error = None
                self._entry = _Entry(secret, started, generation)
            log.debug("secret %s: read, reused for %g s", self.spec.describe(), self.spec.ttl)
            return secret

    async def aget(self) -> Secret:
        """:meth:`get` for the event loop: a read runs in a worker thread, and the callers
        awaiting meanwhile share it."""
        secret = self._fresh()
        if secret is not None:
            return secret
        loop = asyncio.get_running_loop()
        with self._state:
            inflight = self._inflight
            if (
                inflight is not None
                and inflight[0] is loop
                and inflight[1] == self._generation
                and not inflight[2].done()
            ):
                future = inflight[2]
            else:
                future = loop.create_task(asyncio.to_thread(self.get))
                future.add_done_callback(self._landed)
                self._inflight = (loop, self._generation, future)
        # shielded: one caller cancelled must not cancel the read the others wait for
        return await asyncio.shield(future)

    def _landed(self, future: asyncio.Future[Secret]) -> None:
        with self._state:
            if self._inflight is not None and self._inflight[2] is future:
                self._inflight = None  # nor the loop it ran on
        # a read whose every waiter was cancelled: its error is taken, not "never retrieved"
        if not future.cancelled():
            future.exception()

    def invalidate(self) -> None:
        """Forget the value: the next get reads the source again (the upstream said 401)."""
        with self._state:
            self._generation += 1
            self._entry = None
            self._last_error = None
