"""Lineage for the OpenAI Agents SDK (``pip install openai-agents``): tools that call APIs
through the gateway, and hand-offs that give the sub-agent a narrower credential.

    ctx = LineageContext(Toolkit.start(SERVICE, GATEWAY, agent, credential))
    reader = Agent("reader", tools=[lineage_tool(read_message)])
    triage = Agent("triage", tools=[lineage_tool(read_message), lineage_tool(send_email)],
                   handoffs=[lineage_handoff(reader, task="triage/read", actions=["read"])])
    Runner.run_sync(triage, "Triage my inbox", context=ctx)

A tool is ``fn(http, **arguments)`` (``lineage.client.toolkit``): the model sees the schema
of ``fn``'s other parameters, and each call runs with the ``http`` client of the agent
running now (``LineageContext.kit``), every request signed and decided by the gateway. A
denial is the tool's output (the reason and the field), so the model reads it and the run
goes on. The hand-off derives the sub-agent's credential (a fresh key, narrowed to what it
declares) when the model takes it, and the run continues with it; nothing ever goes back
to a wider one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents import Agent, FunctionTool, Handoff, RunContextWrapper, function_tool, handoff

from .flows import LineageHTTPError
from .toolkit import ToolFunction, Toolkit

__all__ = ["LineageContext", "lineage_handoff", "lineage_tool"]


@dataclass
class LineageContext:
    """The run's context (``Runner.run(..., context=LineageContext(kit))``): ``kit`` is the
    standing of the agent running now; a hand-off replaces it with the sub-agent's.
    ``kits`` holds every one the run used, the first agent's first."""

    kit: Toolkit
    kits: list[Toolkit] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.kits:
            self.kits.append(self.kit)

    def close(self, *, revoke: bool = True) -> None:
        """End the run's standing: revoke every credential a hand-off derived during the
        run (``revoke``; the first agent's own credential is left as it is), then close
        every toolkit's HTTP client."""
        for kit in reversed(self.kits[1:] if revoke else []):
            with contextlib.suppress(LineageHTTPError):  # expired, or revoked already
                kit.revoke("the run ended")
        for kit in self.kits:
            kit.close()


def _context(ctx: RunContextWrapper[Any]) -> LineageContext:
    if not isinstance(ctx.context, LineageContext):
        raise TypeError("run the agent with context=LineageContext(toolkit)")
    return ctx.context


def lineage_tool(fn: ToolFunction, **function_tool_kw: Any) -> FunctionTool:
    """``fn(http, **arguments)`` as a ``FunctionTool``: its name, docstring and the schema of
    every parameter but the first (``http``) are the model's; each call runs
    ``kit.run(fn, ...)`` with the current agent's toolkit. ``function_tool_kw`` go to
    ``agents.function_tool`` (``name_override``, ``timeout``, ...)."""
    sig = inspect.signature(fn)
    if not sig.parameters:
        raise TypeError(f"{fn.__name__} must take the HTTP client first: fn(http, ...)")
    _http, *rest = sig.parameters.values()
    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_ONLY)

    def call(ctx: RunContextWrapper[Any], /, *args: Any, **kwargs: Any) -> Any:
        return _context(ctx).kit.run(lambda http: fn(http, *args, **kwargs))

    functools.update_wrapper(call, fn)  # name, docstring; __wrapped__ resolves annotations
    call.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[context, *rest], return_annotation=inspect.Signature.empty
    )
    own = inspect.get_annotations(fn)
    call.__annotations__ = {
        "ctx": RunContextWrapper[Any],
        **{p.name: own[p.name] for p in rest if p.name in own},
    }
    return function_tool(call, **function_tool_kw)


def lineage_handoff(
    agent: Agent[Any],
    *,
    task: str,
    actions: Sequence[str] | None = None,
    resources: Sequence[str] | None = None,
    scope: Sequence[Mapping[str, Any]] | None = None,
    ttl: int = 300,
    description: str = "",
    limits: Mapping[str, Any] | None = None,
    **handoff_kw: Any,
) -> Handoff[Any, Any]:
    """``agents.handoff(agent)`` that, when the model takes it, derives ``agent``'s
    credential from the current one (``Toolkit.delegate``: a fresh key, ``scope`` or the
    current scope with only ``actions``/``resources``, at most ``ttl`` seconds; ``limits``:
    ``max_depth``, ...) and makes it the run's. A delegation the ledger refuses does not
    end the run (the model chose the hand-off, and a prompt-injected model must not be able
    to kill the run with one): the sub-agent runs with no credential at all, every tool
    answering that the hand-off was refused, and never with the current one."""

    async def on_handoff(ctx: RunContextWrapper[Any]) -> None:
        lineage = _context(ctx)
        try:
            sub = await asyncio.to_thread(
                lineage.kit.delegate,
                task=task,
                actions=actions,
                resources=resources,
                scope=scope,
                ttl=ttl,
                description=description,
                **(limits or {}),
            )
        except (LineageHTTPError, ValueError) as refused:
            lineage.kit = _NoStanding(f"Lineage refused the hand-off to {agent.name}: {refused}")
            return
        lineage.kit = sub
        lineage.kits.append(sub)

    return handoff(agent, on_handoff=on_handoff, **handoff_kw)


class _NoStanding:
    """The standing of a sub-agent whose hand-off the ledger refused: no credential, so
    every tool answers with the refusal and nothing is sent."""

    def __init__(self, why: str):
        self.why = why

    def run(self, fn: ToolFunction, /, **arguments: Any) -> str:
        return self.why

    def delegate(self, **kw: Any) -> Any:
        raise ValueError(self.why)

    def close(self) -> None:
        return None
