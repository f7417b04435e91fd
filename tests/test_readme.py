"""The README's agent example runs as written, against a real server.

(tests/test_dist.py runs it again from the client's wheel alone.)
"""

import os
import re
from pathlib import Path

from lineage.ledger.config import Settings
from lineage.verifier.keys import key_file_text
from tests.api_server import Server, running

README = Path(__file__).resolve().parent.parent / "README.md"


def agent_example() -> str:
    text = README.read_text()
    section = text[text.index("## For agents") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_example(srv: Server, tmp_path: Path) -> dict:
    """The example, unedited but for the address and alice's key file (as test_dist does)."""
    key_file = tmp_path / "alice@corp.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, key_file_text(srv.alice).encode())
    os.close(fd)
    code = agent_example().replace("http://127.0.0.1:8000", srv.base)
    code = code.replace("lineage-keys/principals/alice@corp.key", str(key_file))
    namespace: dict = {}
    exec(compile(code, "README", "exec"), namespace)
    proved = namespace["proved"]
    chain = proved.chains()[0]
    assert chain[0].principal == "alice@corp"
    assert chain[-1].id == namespace["sub"]
    assert namespace["invocation"].credential == namespace["sub"]
    return namespace


def test_the_agent_example_runs(tmp_path):
    with running(tmp_path) as srv:
        run_example(srv, tmp_path)


def test_the_agent_example_verifies_under_a_pinned_log_key(tmp_path):
    with running(tmp_path) as srv:
        namespace = run_example(srv, tmp_path)
        assert namespace["lineage"].pinned_log_key == srv.log.log_key.vkey
    code = agent_example()
    assert "log_key=" in code and "lineage log key" in code  # the pinned form is shown
    assert "verified offline, under the pinned key" in code


def test_the_agent_example_runs_when_the_server_requires_dpop_nonces(tmp_path):
    settings = Settings(checkpoint_interval=0.2, dpop_nonce_required=True)
    with running(tmp_path, settings) as srv:
        run_example(srv, tmp_path)
