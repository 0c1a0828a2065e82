"""Build step: a wheel carries the knowledge, the fictional fixtures and the example files
(the trusted-clients example, the example site overlay).

``cards/`` and ``fixtures/`` stay the source, at the top level of the repository; the build
copies them into the package (``cds_server/bundled/``) so that an installed service runs
without the source tree. An editable install copies nothing: ``cds_server/shipped.py`` then
reads the top-level folders of the checkout. Everything else is in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# Source folder (relative to ROOT) → the same path under cds_server/bundled/ in the wheel.
BUNDLED = ("cards", "fixtures/fhir", "fixtures/trusted-clients", "fixtures/site-example")
TARGET = Path("cds_server", "bundled")


class BuildWithBundledData(build_py):
    """``build_py`` plus a copy of each ``BUNDLED`` folder into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # the checkout's own folders are read (cds_server/shipped.py)
        for folder in BUNDLED:
            source = ROOT / folder
            if not source.is_dir():
                raise SystemExit(
                    f"{folder}/ is missing from {ROOT}: a wheel without it would not run"
                )
            target = Path(self.build_lib) / TARGET / folder
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(
                source, target, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]")
            )


setup(cmdclass={"build_py": BuildWithBundledData})
