"""The package boundaries, read from the source (docs/DECISIONS.md D26).

Four folders are four packages under ``lineage.``: verifier/ is
``lineage.verifier`` (pynacl and the standard library), client/ is
``lineage.client`` (httpx, joserfc and the verifier), ledger/ is
``lineage.ledger`` (the verifier and storage/CLI libraries), api/ is
``lineage.api``. Imports run api -> ledger -> verifier and client ->
verifier, never back; nothing imports a bare ``api``, ``ledger`` or
``verifier``.
"""

import ast
import sys
from pathlib import Path

import pytest

import lineage.client
import lineage.verifier

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("verifier", "client", "ledger", "api")
SERVER = {"fastapi", "starlette", "uvicorn", "typer", "rich", "prometheus_client", "sqlite3"}


def imports(folder: str) -> set[tuple[str, str]]:
    """(what is imported, by which file): ``lineage.x`` as ``lineage.x``, else its top name."""
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        if path.name == "setup.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                parts = name.split(".")
                found.add((".".join(parts[:2]) if parts[0] == "lineage" else parts[0], path.name))
    return found


def test_verifier_needs_only_pynacl_and_the_standard_library():
    for module, where in imports("verifier"):
        ok = module in {"lineage.verifier", "nacl"} or module in sys.stdlib_module_names
        assert ok, f"verifier/{where} imports {module}"


# The framework adapters (docs/INTEGRATIONS.md): each may import its own framework, which
# is an optional extra of lineage-client; nothing else imports them.
ADAPTERS = {
    "langchain.py": ("langchain_core", "pydantic"),
    "openai_agents.py": ("agents", "openai", "pydantic"),
    "mcp_tools.py": ("mcp", "httpx2"),
    "crewai.py": ("crewai", "pydantic"),
}


def test_client_needs_only_httpx_joserfc_and_the_verifier():
    # httpx2 is imported only if present (client/gateway.py: McpAuth must also be an
    # httpx2.Auth for the mcp SDK 2.x); lineage-client does not depend on it.
    # anyio: httpx's own dependency (its async transport runs on it), so installed wherever
    # lineage-client is; the async transport sleeps with it, whatever the event loop.
    allowed = {"lineage.client", "lineage.verifier", "httpx", "joserfc", "httpx2", "anyio"}
    for module, where in imports("client"):
        ok = module in allowed or module in sys.stdlib_module_names
        ok = ok or module in ADAPTERS.get(where, ())  # an adapter: its framework, only
        assert ok, f"client/{where} imports {module}"
        assert module != "sqlite3", f"client/{where} imports the ledger's storage"


@pytest.mark.parametrize(
    "folder, forbidden",
    [
        ("verifier", {"lineage.ledger", "lineage.api", "lineage.client"}),
        ("client", {"lineage.ledger", "lineage.api", *SERVER}),
        ("ledger", {"lineage.api", "lineage.client", "fastapi", "starlette"}),
    ],
)
def test_imports_never_run_backwards(folder, forbidden):
    for module, where in imports(folder):
        assert module not in forbidden, f"{folder}/{where} imports {module}"


@pytest.mark.parametrize("folder", [*FOLDERS, "tests", "fixtures", "bench"])
def test_no_bare_top_level_import_names(folder):
    for module, where in imports(folder):
        assert module not in FOLDERS, (
            f"{folder}/{where} imports bare {module}, not lineage.{module}"
        )


@pytest.mark.parametrize("package", [lineage.verifier, lineage.client])
def test_public_surface_is_exported(package):
    for name in package.__all__:
        assert hasattr(package, name), name
    assert sorted(package.__all__) == package.__all__


def test_one_version_in_one_place():
    """VERSION is the version; every build file reads or links it, none writes its own."""
    version = (ROOT / "VERSION").read_text().strip()
    for folder in ("verifier", "client"):
        assert (ROOT / folder / "VERSION").resolve() == (ROOT / "VERSION").resolve()
        assert (ROOT / folder / "LICENSE").resolve() == (ROOT / "LICENSE").resolve()
    for pyproject in ("pyproject.toml", "verifier/pyproject.toml", "client/pyproject.toml"):
        text = (ROOT / pyproject).read_text()
        assert "\nversion =" not in text.replace("version = { file", ""), pyproject
        assert version not in text, f"{pyproject} spells out the version"
    from importlib.metadata import version as installed

    for dist in ("lineage-verifier", "lineage-client", "lineage-ledger"):
        assert installed(dist) == version, dist


def test_no_framework_is_imported_unless_its_adapter_is():
    """``import lineage.client`` and the toolkit load no agent framework: each adapter is
    an optional extra, imported only by the code that uses it."""
    import subprocess

    code = (
        "import sys, lineage.client, lineage.client.toolkit, lineage.client.gateway\n"
        "bad = [m for m in ('langchain_core', 'agents', 'crewai', 'mcp', 'openai') "
        "if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
