"""Lineage for CrewAI (``pip install crewai``): tools that call APIs through the gateway, and
delegation that gives the coworker a narrower credential and a key of its own.

    tools = [lineage_tool(read_message), lineage_tool(send_email)]
    reader = LineageAgent(role="Reader", goal=..., backstory=..., tools=tools,
                          handoff=Handoff(task="triage/read", actions=["read"]))
    triage = Agent(role="Triage", goal=..., backstory=..., tools=tools, allow_delegation=True)
    crew = Crew(agents=[triage, reader], tasks=[Task(..., agent=triage)])
    with lineage_context(Toolkit.start(SERVICE, GATEWAY, agent, credential)):
        crew.kickoff()

A tool is ``fn(http, **arguments)`` (``lineage.client.toolkit``): the model sees the schema
of ``fn``'s other parameters, and each call runs with the ``http`` client of the agent
running now, every request signed and decided by the gateway. A denial is the tool's
output (the reason and the field), so the model reads it and the crew goes on.

The hand-off is CrewAI's own delegation: the "Delegate work to coworker" tool that
``allow_delegation=True`` (or a hierarchical crew's manager) gives an agent. When a
:class:`LineageAgent` with a :class:`Handoff` starts a task, it derives its credential
from the one running now (its delegator's, or the ``lineage_context`` kit for a task of
its own): a fresh key, narrowed to what the hand-off declares. Its tools use it until the
task ends; then it is revoked and the delegator's is current again. Agents without a
hand-off run with the credential of whoever runs them.

The current credential is a ``contextvars`` value: CrewAI copies the context into the
threads and tasks it starts, so it follows each agent's tool calls, sync or async.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from crewai import Agent, Task
from crewai.tools import BaseTool
from crewai.types.callback import SerializableCallable
from pydantic import BaseModel, Field, create_model

from .toolkit import ToolFunction, Toolkit

__all__ = [
    "Handoff",
    "LineageAgent",
    "LineageRun",
    "LineageTool",
    "current_kit",
    "lineage_context",
    "lineage_tool",
]


@dataclass
class LineageRun:
    """One ``lineage_context``: ``kit`` is the first agent's standing, ``kits`` every
    toolkit the run used (that one first, then one per hand-off, in order)."""

    kit: Toolkit
    kits: list[Toolkit] = field(default_factory=list)

    def close(self) -> None:
        """Close every toolkit's HTTP client."""
        for kit in self.kits:
            kit.close()


@dataclass(frozen=True)
class _Standing:
    run: LineageRun
    kit: Toolkit
    agent: Any = None  # the LineageAgent whose hand-off derived ``kit``, if one did


_STANDING: ContextVar[_Standing | None] = ContextVar("lineage_crewai", default=None)


@contextmanager
def lineage_context(kit: Toolkit) -> Iterator[LineageRun]:
    """Run crews and agents inside this block with ``kit``'s credential; on leaving it,
    close every toolkit's HTTP client (``kit`` makes a new one if used again)."""
    run = LineageRun(kit, [kit])
    token = _STANDING.set(_Standing(run, kit))
    try:
        yield run
    finally:
        _STANDING.reset(token)
        run.close()


def current_kit() -> Toolkit:
    """The toolkit of the agent running now."""
    standing = _STANDING.get()
    if standing is None:
        raise RuntimeError("no Lineage credential: run the crew inside lineage_context(kit)")
    return standing.kit


def _never_cache(_arguments: Any = None, _result: Any = None) -> bool:
    return False


class LineageTool(BaseTool):
    """``fn(http, **arguments)`` as a CrewAI tool (make one with :func:`lineage_tool`),
    run with the current agent's toolkit: ``kit.run``, so a refusal is the answer's text.

    Never cached: each call is the gateway's to decide and log, and CrewAI's cache is
    shared by the whole crew, so it would hand one credential's answer to another."""

    fn: SerializableCallable
    cache_function: SerializableCallable = _never_cache

    def _run(self, **arguments: Any) -> Any:
        return current_kit().run(self.fn, **arguments)

    async def _arun(self, **arguments: Any) -> Any:
        return await asyncio.to_thread(self._run, **arguments)  # copies the context


def lineage_tool(
    fn: ToolFunction, *, name: str | None = None, description: str | None = None, **tool_kw: Any
) -> LineageTool:
    """A :class:`LineageTool` for ``fn``: its name, docstring and the schema of every
    parameter but the first (``http``) are the model's. ``tool_kw`` go to ``BaseTool``
    (``result_as_answer``, ``max_usage_count``, ...)."""
    _http, *rest = inspect.signature(fn).parameters.values()
    hints = typing.get_type_hints(fn, include_extras=True)
    empty = inspect.Parameter.empty
    fields: dict[str, Any] = {
        p.name: (hints.get(p.name, Any), ... if p.default is empty else p.default) for p in rest
    }
    return LineageTool(
        name=name or fn.__name__,
        description=description or inspect.getdoc(fn) or fn.__name__,
        args_schema=create_model(f"{fn.__name__}_arguments", **fields),
        fn=fn,
        **tool_kw,
    )


class Handoff(BaseModel):
    """What a coworker's credential is narrowed to (``Toolkit.delegate``): ``task``, a
    sub-task of the delegator's; ``scope``, or the delegator's scope with only ``actions``
    and ``resources``; at most ``ttl`` seconds; ``limits``: ``max_depth``, ``max_uses``...
    With ``revoke`` (the default) the credential is revoked when the coworker's task ends."""

    task: str
    actions: list[str] | None = None
    resources: list[str] | None = None
    scope: list[dict[str, Any]] | None = None
    ttl: int = 300
    description: str = ""
    limits: dict[str, Any] = Field(default_factory=dict)
    revoke: bool = True

    def derive(self, kit: Toolkit) -> Toolkit:
        """The coworker's toolkit: a fresh key, a credential derived from ``kit``'s."""
        return kit.delegate(
            task=self.task,
            actions=self.actions,
            resources=self.resources,
            scope=self.scope,
            ttl=self.ttl,
            description=self.description,
            **self.limits,
        )

    def release(self, sub: Toolkit) -> None:
        """The coworker's task is over: revoke its credential (if ``revoke``), close it."""
        try:
            if self.revoke:
                sub.revoke("hand-off done")
        finally:
            sub.close()


class LineageAgent(Agent):
    """A CrewAI ``Agent`` that, given a ``handoff``, runs each task it is handed with a
    credential derived for it from the one running now, by a key of its own.

    A derivation the ledger refuses (a scope wider than the delegator's) fails the task:
    the delegator's model reads the error (CrewAI's delegation tool answers with it); a
    task of the agent's own ends the crew with it."""

    handoff: Handoff | None = None

    def _delegator(self) -> _Standing | None:
        """The standing to derive from; None when the task runs as it is (no hand-off, or
        CrewAI retrying this agent's task under the credential it already holds)."""
        standing = _STANDING.get()
        if self.handoff is None or (standing is not None and standing.agent is self):
            return None
        if standing is None:
            raise RuntimeError(f"{self.role}: run the crew inside lineage_context(kit)")
        return standing

    def _hold(self, delegator: _Standing, sub: Toolkit) -> Token[_Standing | None]:
        delegator.run.kits.append(sub)
        return _STANDING.set(_Standing(delegator.run, sub, self))

    def execute_task(
        self, task: Task, context: str | None = None, tools: list[BaseTool] | None = None
    ) -> Any:
        delegator = self._delegator()
        if delegator is None or self.handoff is None:
            return super().execute_task(task, context, tools)
        sub = self.handoff.derive(delegator.kit)
        token = self._hold(delegator, sub)
        try:
            return super().execute_task(task, context, tools)
        finally:
            _STANDING.reset(token)
            self.handoff.release(sub)

    async def aexecute_task(
        self, task: Task, context: str | None = None, tools: list[BaseTool] | None = None
    ) -> Any:
        delegator = self._delegator()
        if delegator is None or self.handoff is None:
            return await super().aexecute_task(task, context, tools)
        sub = await asyncio.to_thread(self.handoff.derive, delegator.kit)  # the ledger's I/O
        token = self._hold(delegator, sub)
        try:
            return await super().aexecute_task(task, context, tools)
        finally:
            _STANDING.reset(token)
            await asyncio.to_thread(self.handoff.release, sub)
