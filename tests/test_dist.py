"""The three installs stand alone, as their users get them (docs/DECISIONS.md D26).

From this checkout, ``python -m build`` makes every sdist and wheel (each
wheel built from its sdist, so the sdists are complete too). Each wheel then
goes into its own fresh virtual environment, run with ``python -I`` from an
empty folder so that nothing in the checkout can stand in for what is not
installed:

- lineage-verifier: pynacl (and what pynacl pulls in) is all that comes with
  it; ``lineage-verify`` passes every valid fixture bundle and fails every
  invalid one with the check ``fixtures/bundles/expected.json`` names.
- lineage-client: none of the server's libraries comes with it; it runs the
  README's agent example, unedited but for the address and the key's path,
  against a server started from the full install.
- lineage-ledger: ``lineage`` runs (init, principal add, serve).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api_server import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "fixtures" / "bundles"
EXPECTED = json.loads((BUNDLES / "expected.json").read_text())
LOG_KEY = (ROOT / "fixtures" / "log.vkey").read_text().strip()
VERSION = (ROOT / "VERSION").read_text().strip()

# What pynacl pulls in, and what every fresh environment starts with.
VERIFIER_MAY_HAVE = {"lineage-verifier", "pynacl", "cffi", "pycparser", "pip", "setuptools"}
SERVER_ONLY = {"fastapi", "uvicorn", "starlette", "typer", "rich", "prometheus-client"}

pytestmark = pytest.mark.slow


def run(*args: object, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 600)
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def build_all(out: Path) -> None:
    """Every sdist and wheel into ``out``, built from a copy of the checkout's build inputs.

    A copy, so that a build never races another in the same source folder and
    leaves nothing (egg-info, build/) in the checkout.
    """
    src = out.parent / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for folder in ("verifier", "client", "ledger", "api"):
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)  # links become files
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "VERSION", "LICENSE", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in (src / "verifier", src / "client", src):  # each wheel from its sdist, as pip does
        run(sys.executable, "-m", "build", "--no-isolation", "-q", "-o", out, folder)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """Built once per run: xdist workers share the folder, and the first one builds."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the run's folder, above each worker's own
        shared = tmp_path_factory.getbasetemp().parent / "lineage-dist"
        shared.mkdir(exist_ok=True)
    else:
        shared = tmp_path_factory.mktemp("lineage-dist")
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = shared / "dist"
        if not (shared / "done").exists():
            shutil.rmtree(shared / "src", ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            build_all(out)
            (shared / "done").touch()
    found = {p.name.split("-")[0].replace("_", "-"): p for p in out.glob("*.whl")}
    assert sorted(found) == ["lineage-client", "lineage-ledger", "lineage-verifier"]
    assert len(list(out.glob("*.tar.gz"))) == 3
    return found


def venv(where: Path, *wheels: Path) -> Path:
    """A fresh virtual environment at ``where`` with ``wheels`` installed; its bin/.

    The environment gets no pip of its own: this one's installs into it.
    """
    run(sys.executable, "-m", "venv", "--without-pip", where)
    pip = [sys.executable, "-m", "pip", "--python", where / "bin" / "python"]
    run(*pip, "install", "-q", "--no-compile", "--disable-pip-version-check", *wheels)
    return where / "bin"


def installed(bin_: Path) -> set[str]:
    listing = run(
        bin_ / "python",
        "-I",
        "-c",
        "import importlib.metadata as m; print(*(d.metadata['Name'] for d in m.distributions()))",
    ).stdout
    return {name.lower().replace("_", "-") for name in listing.split()}


def imports(bin_: Path, module: str, cwd: Path) -> bool:
    probe = subprocess.run([bin_ / "python", "-I", "-c", f"import {module}"], cwd=cwd)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def empty(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("elsewhere")


@pytest.fixture(scope="module")
def full(tmp_path_factory, wheels) -> Path:
    return venv(tmp_path_factory.mktemp("full") / "venv", *wheels.values())


def test_wheels_carry_one_version_and_only_lineage_names(wheels):
    import zipfile

    for dist, wheel in wheels.items():
        assert wheel.name.startswith(f"{dist.replace('-', '_')}-{VERSION}-"), wheel.name
        tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
        assert tops == {"lineage", f"{dist.replace('-', '_')}-{VERSION}.dist-info"}, tops
        names = zipfile.ZipFile(wheel).namelist()
        stray = [n for n in names if n.endswith("/setup.py") or n == "lineage/__init__.py"]
        assert not stray, f"{wheel.name} packages {stray}"


def test_the_client_wheel_offers_each_framework_as_an_extra(wheels):
    """docs/INTEGRATIONS.md's installs: the adapters ship in lineage-client, and each
    framework is an extra, never a dependency."""
    import zipfile

    wheel = zipfile.ZipFile(wheels["lineage-client"])
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    text = wheel.read(meta).decode()
    for extra, requirement in (
        ("langchain", "langchain-core"),
        ("openai-agents", "openai-agents"),
        ("mcp", "mcp"),
        ("crewai", "crewai"),
    ):
        assert f"Provides-Extra: {extra}" in text, extra
        lines = [
            line for line in text.splitlines() if line.startswith(f"Requires-Dist: {requirement}")
        ]
        assert lines and all(f'extra == "{extra}"' in line for line in lines), lines
    for module in ("toolkit", "langchain", "openai_agents", "mcp_tools", "crewai"):
        assert f"lineage/client/{module}.py" in wheel.namelist(), module


def test_verifier_alone_verifies_every_fixture(tmp_path, wheels, empty):
    bin_ = venv(tmp_path / "venv", wheels["lineage-verifier"])
    assert installed(bin_) <= VERIFIER_MAY_HAVE, installed(bin_) - VERIFIER_MAY_HAVE
    assert imports(bin_, "lineage.verifier", empty)
    for absent in ("lineage.client", "lineage.ledger", "lineage.api", "api", "ledger", "verifier"):
        assert not imports(bin_, absent, empty), f"{absent} importable from the verifier install"
    bundles = sorted(BUNDLES.glob("*.json"))
    assert len(bundles) > 40
    for bundle in bundles:
        if bundle.name == "expected.json":
            continue
        done = subprocess.run(
            [bin_ / "lineage-verify", bundle, "--log-key", LOG_KEY, "--json"],
            capture_output=True,
            text=True,
            cwd=empty,
        )
        result = json.loads(done.stdout)
        if bundle.name.startswith("valid-"):
            assert (done.returncode, result["ok"]) == (0, True), (bundle.name, result)
        else:
            want = EXPECTED[bundle.name]
            assert done.returncode == 1, (bundle.name, done.stderr)
            assert result["check"] == want["check"], (bundle.name, result)
            assert want["detail"] in result["error"], (bundle.name, result)


def readme_agent_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## For agents") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_client_alone_runs_the_readme_example(tmp_path, wheels, full, empty):
    bin_ = venv(tmp_path / "client", wheels["lineage-client"], wheels["lineage-verifier"])
    have = installed(bin_)
    assert not have & (SERVER_ONLY | {"lineage-ledger"}), have & SERVER_ONLY
    assert {"lineage-client", "lineage-verifier", "httpx"} <= have
    for absent in ("lineage.ledger", "lineage.api", "fastapi", "uvicorn"):
        assert not imports(bin_, absent, empty), f"{absent} importable from the client install"

    # The operator's side, from the full install: a ledger, alice's key, a server.
    work = tmp_path / "operator"
    work.mkdir()
    db, keys, port = work / "lineage.db", work / "lineage-keys", free_port()
    env = {**os.environ, "LINEAGE_KEYS": str(keys)}
    run(full / "lineage", "init", "--db", db, "--origin", "example.com/agents", cwd=work, env=env)
    run(full / "lineage", "principal", "add", "alice@corp", "--generate-key", cwd=work, env=env)
    server = subprocess.Popen(
        [full / "lineage", "serve", "--db", db, "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base, server)

        code = readme_agent_example()
        assert "lineage-keys/principals/alice@corp.key" in code
        code = code.replace("http://127.0.0.1:8000", base).replace(
            "lineage-keys/principals/alice@corp.key", str(keys / "principals" / "alice@corp.key")
        )
        script = empty / "agent.py"
        script.write_text(
            code
            + "\nchain = proved.chains()[0]"
            + "\nassert chain[0].principal == 'alice@corp', chain"
            + "\nassert chain[-1].id == sub and invocation.credential == sub"
            + "\nprint('verified', len(chain), 'links')\n"
        )
        done = run(bin_ / "python", "-I", script, cwd=empty)
        assert "verified 2 links" in done.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
