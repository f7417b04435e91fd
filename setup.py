"""lineage-ledger's dependencies: the two smaller installs pinned to VERSION, then the server's.

Everything else about the build is in pyproject.toml; this file exists only
because a pin on the one version cannot be written there.
"""

from pathlib import Path

from setuptools import setup

VERSION = (Path(__file__).parent / "VERSION").read_text().strip()

setup(
    install_requires=[
        f"lineage-verifier=={VERSION}",
        f"lineage-client=={VERSION}",
        "pynacl>=1.5",
        "typer>=0.12",
        "rich>=13",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "python-multipart>=0.0.9",
        "joserfc>=1.0",
        "httpx>=0.27",
        "prometheus-client>=0.20",
    ],
)
