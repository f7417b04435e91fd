"""The agent client: a few lines to get, delegate, use and prove a Lineage credential.

    from lineage.client import Agent, LineageClient
    from lineage.verifier.keys import SigningKey

    lineage = LineageClient("http://127.0.0.1:8000", log_key=LOG_KEY)  # `lineage log key`
    agent = Agent.ephemeral()                                  # a fresh Ed25519 key
    handle = lineage.grant(alice_key, "alice@corp", agent, task="inbox-triage",
                           scope=[{"type": "email", "actions": ["read"],
                                   "locations": ["https://mail.example.com:443"]}])
    reader = Agent.ephemeral()
    sub = lineage.delegate(agent, handle, reader, task="inbox-triage/read", scope=...)
    invocation = reader.invoke(sub, {"type": "email", "action": "read",
                                     "location": "https://mail.example.com:443"})
    # ... the enforcement point: LineageClient(url, token=EP_TOKEN).access(invocation, ctx)
    proved = lineage.verify_lineage(reader, sub)               # offline, under the pinned key

Installed alone (``pip install lineage-client``) it needs httpx, joserfc (DPoP
proofs) and ``lineage-verifier``, never the ledger or the server.
"""

from lineage.verifier.keys import load_key_file

from .clients import AsyncLineageClient, LineageClient
from .flows import Agent, LineageHTTPError, LogKeyError, ReceiptError

__all__ = [
    "Agent",
    "AsyncLineageClient",
    "LineageClient",
    "LineageHTTPError",
    "LogKeyError",
    "ReceiptError",
    "load_key_file",
]
