"""The README's agent example runs as written, against a real server."""

import re
from pathlib import Path

from tests.api_server import running

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_agent_example_runs(tmp_path):
    text = README.read_text()
    section = text[text.index("## For agents") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    with running(tmp_path) as srv:
        namespace = {"alice_key": srv.alice}
        exec(compile(code.replace("http://127.0.0.1:8000", srv.base), "README", "exec"), namespace)
        proved = namespace["proved"]
        chain = proved.chains()[0]
        assert chain[0].principal == "alice@corp"
        assert chain[-1].id == namespace["sub"]
        assert namespace["invocation"].credential == namespace["sub"]
