"""What every framework adapter stands on (docs/INTEGRATIONS.md): an agent's ephemeral key,
its credential, and an HTTP client whose every request goes through the gateway, signed.

    kit = Toolkit.start(SERVICE, GATEWAY, agent, credential)   # or kit.delegate(...)
    kit.run(read_message, message_id="17")       # the tool's code: fn(http, **arguments)
    reader = kit.delegate(actions=["read"], task="triage/read")   # a sub-agent: fresh key

A tool is a plain function ``fn(http, **arguments) -> str`` that calls the real API's URLs
with ``http`` (an ``httpx.Client``): the gateway decides and logs each request and attaches
the API's secret, so the tool's code, the agent's memory and the model never hold one. A
denial comes back as a ``Denied`` whose ``str`` is what the model reads (the reason, the
field); ``run`` turns it into the tool's answer instead of an exception that ends the run.

The framework modules (``lineage.client.langchain``, ``lineage.client.openai_agents``,
``lineage.client.mcp_tools``, ``lineage.client.crewai``) wrap this for their framework and
import it only when imported themselves.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from .clients import LineageClient
from .flows import Agent
from .gateway import (
    APPROVAL_HEADER,
    APPROVAL_PENDING,
    MappingError,
    NotBehindGateway,
    OnApproval,
    gateway_session,
)

__all__ = ["REFUSALS", "Denied", "Held", "Refused", "ToolFunction", "Toolkit", "refusal_text"]

ToolFunction = Callable[..., Any]
_LOCK = threading.Lock()
_CHECK = re.compile(r"(?P<check>[a-z-]+): ")
# FORMAT.md §8 scope denials: "scope: credential X does not permit the request: FIELD: ..."
_FIELD = re.compile(r"does not permit the request: (?P<field>[A-Za-z0-9_.\[\]-]+):")


class Denied(Exception):
    """The gateway refused the call: logged as a deny, never forwarded. ``check`` is the
    rule (FORMAT.md §8 names, or ``policy``), ``field`` the request field it names."""

    def __init__(self, reason: str, receipt: Mapping[str, Any] | None = None):
        super().__init__(reason)
        self.reason, self.receipt = reason, receipt
        check, found = _CHECK.match(reason), _FIELD.search(reason)
        self.check = check.group("check") if check else None
        self.field = found.group("field") if found else None

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"Lineage denied this call{where}: {self.reason}"


class Refused(Exception):
    """The call was not sent, or the gateway would not take it: a request the gateway's
    rules refuse (a path or query it cannot spell once, a URL no route fronts, a body too
    large, too many calls waiting), or no decision could be had. Nothing was forwarded."""

    def __str__(self) -> str:
        return f"Lineage refused to send this call: {self.args[0]}"


class Held(Exception):
    """A policy rule holds the call until a person approves it (step-up): ``url`` is their
    page. Nothing was logged or forwarded."""

    def __init__(self, reason: str, approval: Mapping[str, Any]):
        super().__init__(reason)
        self.reason, self.approval = reason, dict(approval)

    def __str__(self) -> str:
        url = self.approval.get("url", "")
        return f"This call waits for a person's approval ({self.reason}); their page: {url}"


def _as_refusal(exc: BaseException) -> BaseException:
    """A refusal as the tool's answer: the toolkit's own, or what the transport refused to
    send (its rules for paths and queries, a URL outside every route)."""
    if isinstance(exc, Denied | Held | Refused):
        return exc
    return Refused(str(exc) or type(exc).__name__)


def _raise_refusals(response: httpx.Response) -> None:
    """The gateway's own refusals, as exceptions the toolkit turns into tool answers.

    Only the gateway's: an answer the gateway forwarded carries ``Lineage-Access`` (and the
    gateway drops any ``Lineage-*`` header of the upstream's), so an API that answers 403
    with a body shaped like a denial, or like an approval link, is the API's answer, never
    Lineage's word. An approval link also needs the gateway's ``Lineage-Approval`` header.
    """
    if response.status_code < 400 or "lineage-access" in response.headers:
        return
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return
    error, description = body["error"], str(body.get("error_description", ""))
    if response.status_code == 403 and error == "access_denied":
        raise Denied(description, body.get("receipt"))
    if response.status_code == 403 and error == APPROVAL_PENDING:
        if APPROVAL_HEADER in response.headers:
            raise Held(description, body.get("approval") or {})
        return
    raise Refused(f"{response.status_code} {error}: {description}")


# What a tool's answer says instead of ending the run: the gateway's refusals, and what the
# transport would not send (a request it cannot derive, a URL outside every route).
REFUSALS = (Denied, Held, Refused, MappingError, NotBehindGateway, httpx.InvalidURL)


def refusal_text(exc: BaseException) -> str:
    """The text a model reads for one of ``REFUSALS``."""
    return str(_as_refusal(exc))


@dataclass
class Toolkit:
    """One agent's standing: its key, its credential, its way through the gateway."""

    client: LineageClient
    gateway: str
    agent: Agent
    credential: str
    task: str | None = None
    parent: Toolkit | None = None
    approval_wait: float = 0
    on_approval: OnApproval | None = None
    _http: httpx.Client | None = field(default=None, repr=False)
    _standing: dict[str, Any] | None = field(default=None, repr=False)
    _owns_client: bool = field(default=False, repr=False)  # made by start(): closed by close()

    @classmethod
    def start(
        cls,
        service: str,
        gateway: str,
        agent: Agent,
        credential: str,
        *,
        log_key: str | None = None,
        **kw: Any,
    ) -> Toolkit:
        """A toolkit for ``credential``, held by ``agent``, at ``service`` and ``gateway``."""
        client = LineageClient(service, log_key=log_key)
        return cls(client, gateway, agent, credential, _owns_client=True, **kw)

    @property
    def http(self) -> httpx.Client:
        """Every request signed for this credential, through the gateway; a 403 refusal
        raises ``Denied`` or ``Held``."""
        with _LOCK:  # frameworks run tools in threads, several at once
            if self._http is None:
                self._http = self._session()
        return self._http

    def _session(self) -> httpx.Client:
        return gateway_session(
            self.gateway,
            self.agent,
            self.credential,
            approval_wait=self.approval_wait,
            on_approval=self.on_approval,
            event_hooks={"response": [_raise_refusals]},
            timeout=30,
        )

    def run(self, fn: ToolFunction, /, **arguments: Any) -> Any:
        """``fn(self.http, **arguments)``; a refusal is the answer (its text), so the model
        reads why and the run goes on."""
        try:
            return fn(self.http, **arguments)
        except REFUSALS as refusal:
            return str(_as_refusal(refusal))

    def standing(self) -> dict[str, Any]:
        """This credential as the ledger sees it (RFC 7662 introspection, as its holder)."""
        if self._standing is None:
            self._standing = self.client.introspect(self.credential, holder=self.agent)
        return self._standing

    def scope(self) -> list[dict[str, Any]]:
        return list(self.standing().get("authorization_details") or [])

    def delegate(
        self,
        *,
        task: str,
        actions: Sequence[str] | None = None,
        resources: Sequence[str] | None = None,
        scope: Sequence[Mapping[str, Any]] | None = None,
        ttl: int = 300,
        description: str = "",
        **limits: Any,
    ) -> Toolkit:
        """A sub-agent's toolkit: a fresh key, and a credential derived from this one,
        narrowed to ``scope`` (or this scope with only ``actions`` and ``resources``),
        for at most ``ttl`` seconds and never past this credential's expiry. ``task`` is a
        sub-task of this one (``triage/read``). The ledger refuses anything wider."""
        if scope is None:
            scope = _narrowed(self.scope(), actions, resources)
        expires = self.standing().get("exp")
        if isinstance(expires, int):
            ttl = max(1, min(ttl, expires - int(time.time()) - 1))
        child = Agent.ephemeral()
        handle = self.client.delegate(
            self.agent,
            self.credential,
            child,
            task=task,
            scope=list(scope),
            ttl=ttl,
            description=description,
            **limits,
        )
        return Toolkit(
            self.client,
            self.gateway,
            child,
            handle,
            task=task,
            parent=self,
            approval_wait=self.approval_wait,
            on_approval=self.on_approval,
        )

    def revoke(self, reason: str = "done") -> None:
        """End this credential (and everything derived from it), signed by its holder."""
        self.client.revoke(self.credential, holder=self.agent, reason=reason)

    def close(self) -> None:
        """Close this kit's HTTP client (and the service client, if ``start`` made it;
        sub-agents' kits share their parent's)."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._owns_client:
            self.client.close()
            self._owns_client = False

    def __enter__(self) -> Toolkit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _within(asked: str, pattern: str) -> bool:
    """Whether resource (or pattern) ``asked`` is within ``pattern`` (SCOPE.md §2: a
    pattern's wildcard is its last segment, ``*``)."""
    if pattern.endswith("/*") or pattern.endswith(":*"):
        return asked.startswith(pattern[:-1]) and asked != pattern[:-1]
    return asked == pattern


def _narrowed(
    scope: Sequence[Mapping[str, Any]],
    actions: Sequence[str] | None,
    resources: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """Each detail of ``scope`` keeping only ``actions`` (if given) and, if ``resources``
    are given, only those of them its own patterns cover (a detail with no resource list
    covers them all); details left with no action or no resource are dropped, with their
    constraints kept on the ones that stay."""
    out = []
    for detail in scope:
        d = dict(detail)
        if actions is not None:
            d["actions"] = sorted(set(d.get("actions", [])) & set(actions))
            if not d["actions"]:
                continue
        if resources is not None:
            own = d.get("resources")
            kept = sorted(
                r for r in set(resources) if own is None or any(_within(r, p) for p in own)
            )
            if not kept:
                continue
            d["resources"] = kept
        out.append(d)
    if not out:
        raise ValueError("nothing of this credential's scope is left to delegate")
    return out
