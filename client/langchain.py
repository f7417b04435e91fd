"""LangChain tools that go through the Lineage gateway (docs/INTEGRATIONS.md).

    kit = Toolkit.start(SERVICE, GATEWAY, agent, credential)
    read = lineage_tool(kit, read_message)          # read_message(http, message_id: str)
    reader = lineage_handoff(kit, "reader", "Reads messages.", task="mail/read",
                             actions=["read"], build=lambda sub: my_sub_agent(sub))
    run_agent(model, [read, reader], "Triage my inbox")

``lineage_tool`` makes a ``StructuredTool`` of a plain function ``fn(http, **arguments)``:
its arguments schema is ``fn``'s signature without ``http``, and each call signs its
requests with the agent's ephemeral key through the gateway, which attaches the API's
secret. A refusal is not an exception that ends the run: the model gets a ``ToolMessage``
with ``status="error"`` whose content is the reason and the field ("Lineage denied this
call (field attributes.to): ...").

``lineage_handoff`` is the hand-off to a sub-agent: when the model calls it, the sub-agent
gets a fresh key and a credential derived from the agent's, narrowed to what the hand-off
declares, and runs on the model's request; its credential is revoked when it finishes.

Importing this module imports ``langchain_core``; nothing else in ``lineage`` does.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from langchain_core.tools.base import create_schema_from_function

from .flows import LineageHTTPError
from .toolkit import REFUSALS, ToolFunction, Toolkit, refusal_text

__all__ = ["lineage_handoff", "lineage_tool", "run_agent"]


def lineage_tool(
    kit: Toolkit,
    fn: ToolFunction,
    *,
    name: str | None = None,
    description: str | None = None,
    parse_docstring: bool = False,
) -> StructuredTool:
    """``fn(http, **arguments)`` as a LangChain tool acting with ``kit``'s credential.

    The schema is ``fn``'s parameters after the first (``http``, an ``httpx.Client``
    through the gateway); the description is ``description`` or ``fn``'s docstring
    (``parse_docstring``: take each argument's description from a Google-style one).
    A denial, or a call held for a person's approval, is the tool's error content."""
    name = name or fn.__name__
    first = next(iter(inspect.signature(fn).parameters))  # the http client
    schema = create_schema_from_function(
        name,
        fn,
        filter_args=[first, "run_manager", "callbacks"],
        parse_docstring=parse_docstring,
    )

    def call(**arguments: Any) -> Any:
        try:
            return fn(kit.http, **arguments)
        except REFUSALS as refusal:
            raise ToolException(refusal_text(refusal)) from refusal

    return StructuredTool.from_function(
        call,
        name=name,
        description=description or inspect.getdoc(fn) or name,
        args_schema=schema,
        handle_tool_error=True,
        handle_validation_error=True,  # arguments of the wrong shape: an answer, not the end
    )


def lineage_handoff(
    kit: Toolkit,
    name: str,
    description: str,
    *,
    task: str,
    build: Callable[[Toolkit], Runnable | Callable[[str], Any]],
    actions: Sequence[str] | None = None,
    resources: Sequence[str] | None = None,
    scope: Sequence[Mapping[str, Any]] | None = None,
    ttl: int = 300,
    revoke: bool = True,
) -> StructuredTool:
    """A tool the model calls to hand ``request`` (a string) to a sub-agent.

    Each call derives the sub-agent's toolkit, ``kit.delegate(task=task, actions=...,
    resources=..., scope=..., ttl=...)`` (a fresh key, a narrower credential logged as a
    delegation of ``kit``'s), runs ``build(sub_kit)`` (a Runnable or a function) on the
    request, and answers with its final text. The sub-credential is revoked when the
    sub-agent finishes (``revoke=False`` leaves it to expire). A delegation the ledger
    refuses is the tool's error content."""

    def hand_off(request: str) -> str:
        try:
            sub = kit.delegate(
                task=task,
                actions=actions,
                resources=resources,
                scope=scope,
                ttl=ttl,
                description=description,
            )
        except (LineageHTTPError, ValueError) as refused:  # the ledger's no, or nothing left
            raise ToolException(f"Lineage refused the hand-off to {name}: {refused}") from None
        try:
            agent = build(sub)
            result = agent.invoke(request) if isinstance(agent, Runnable) else agent(request)
            return _text(result)
        finally:
            try:
                if revoke:
                    sub.revoke(f"{name}: hand-off finished")
            finally:
                sub.close()

    return StructuredTool.from_function(
        hand_off,
        name=name,
        description=description,
        handle_tool_error=True,
        handle_validation_error=True,
    )


def run_agent(
    model: BaseChatModel | Runnable,
    tools: Sequence[BaseTool],
    request: str | Sequence[BaseMessage],
    *,
    max_steps: int = 20,
) -> list[BaseMessage]:
    """The smallest tool-calling loop: ask ``model``, run each tool call it makes, give it
    the ``ToolMessage``s, until it answers without one. Returns the conversation (the
    last message is the answer). Any agent loop works with these tools; this one needs
    only ``langchain_core``."""
    by_name = {tool.name: tool for tool in tools}
    with contextlib.suppress(AttributeError, NotImplementedError):  # the fake chat models
        model = model.bind_tools(list(tools))  # type: ignore[union-attr]
    messages = [HumanMessage(request)] if isinstance(request, str) else list(request)
    for _ in range(max_steps):
        reply = model.invoke(messages)
        messages.append(reply)
        if not getattr(reply, "tool_calls", None):
            return messages
        for call in reply.tool_calls:
            tool = by_name.get(call["name"])
            if tool is None:
                missing = f"there is no tool named {call['name']!r}"
                messages.append(ToolMessage(missing, tool_call_id=call["id"], status="error"))
            else:
                messages.append(tool.invoke(call))
    raise RuntimeError(f"the agent made tool calls for {max_steps} steps without answering")


def _text(result: Any) -> str:
    """A sub-agent's final answer as text: a message's, a conversation's last, a LangGraph
    state's last message's, or ``str(result)``."""
    if isinstance(result, Mapping) and "messages" in result:
        result = result["messages"]
    if isinstance(result, Sequence) and not isinstance(result, str) and result:
        result = result[-1]
    if isinstance(result, BaseMessage):
        return result.text
    return str(result)
