"""Pins lineage-verifier to this release's VERSION (one version, in one file).

This folder is the package itself, so this script keeps itself out of it.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

VERSION = (Path(__file__).parent / "VERSION").read_text().strip()


class BuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        found = super().find_package_modules(package, package_dir)
        return [(pkg, mod, path) for pkg, mod, path in found if mod != "setup"]


setup(
    install_requires=[
        f"lineage-verifier=={VERSION}",
        "httpx>=0.27",
        "joserfc>=1.0",
        # httpcore imports sniffio on every async call and, without it, searches sys.path
        # for it each time: a few percent of every async request (docs/BENCH.md, gateway).
        "sniffio>=1.3",
        # the async gateway transport and client sleep with it while a person approves a
        # call (step-up), on whatever event loop runs them; httpx itself depends on it
        "anyio>=4",
    ],
    cmdclass={"build_py": BuildPy},
)
