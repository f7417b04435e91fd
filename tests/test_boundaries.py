"""The package boundaries: verifier/ is pynacl + stdlib, imports run api -> ledger -> verifier."""

import ast
import sys
from pathlib import Path

import pytest

import verifier

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "verifier": {"verifier", "nacl"},
    "ledger": {"ledger", "verifier"},  # plus third-party storage/CLI libraries, never api
}


def imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {(alias.name.split(".")[0], path.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add((node.module.split(".")[0], path.name))
    return found


def test_verifier_needs_only_pynacl_and_the_standard_library():
    for module, where in imports("verifier"):
        ok = module in ALLOWED["verifier"] or module in sys.stdlib_module_names
        assert ok, f"verifier/{where} imports {module}"


@pytest.mark.parametrize(
    "package, forbidden",
    [("verifier", {"ledger", "api"}), ("ledger", {"api", "fastapi", "starlette"})],
)
def test_imports_never_run_backwards(package, forbidden):
    for module, where in imports(package):
        assert module not in forbidden, f"{package}/{where} imports {module}"


def test_public_surface_is_exported():
    for name in verifier.__all__:
        assert hasattr(verifier, name), name
    assert sorted(verifier.__all__) == verifier.__all__
