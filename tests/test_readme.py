"""The README's agent example runs as written, against a real server.

(tests/test_dist.py runs it again from the client's wheel alone.)
"""

import os
import re
from pathlib import Path

from lineage.verifier.keys import key_file_text
from tests.api_server import running

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_agent_example_runs(tmp_path):
    text = README.read_text()
    section = text[text.index("## For agents") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    key_file = tmp_path / "alice@corp.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with running(tmp_path) as srv:
        os.write(fd, key_file_text(srv.alice).encode())
        os.close(fd)
        code = code.replace("http://127.0.0.1:8000", srv.base)
        code = code.replace("lineage-keys/principals/alice@corp.key", str(key_file))
        namespace: dict = {}
        exec(compile(code, "README", "exec"), namespace)
        proved = namespace["proved"]
        chain = proved.chains()[0]
        assert chain[0].principal == "alice@corp"
        assert chain[-1].id == namespace["sub"]
        assert namespace["invocation"].credential == namespace["sub"]
