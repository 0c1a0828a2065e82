"""Where the files shipped with the service are: ``cards/``, the fictional fixtures, examples.

A wheel carries them inside the package, under ``cds_server/bundled/`` (the build copies
them there: ``setup.py``); an editable install or a source checkout reads the repository's
top-level folders, which stay the source. Looked up through ``importlib.resources``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED = "bundled"
CHECKOUT = Path(__file__).resolve().parents[1]


def packaged_path(relative: str) -> Path:
    """Where ``relative`` (e.g. ``"fixtures/fhir"``) is in an installed wheel."""
    # A wheel installs as plain files, so the package's Traversable is a pathlib.Path.
    return Path(str(resources.files("cds_server").joinpath(BUNDLED))) / relative


def shipped_path(relative: str) -> Path:
    """The installed copy of ``relative`` if there is one, else the checkout's own folder.

    When neither exists, the installed location, so that an error names where it was expected.
    """
    packaged = packaged_path(relative)
    if packaged.exists():
        return packaged
    source = CHECKOUT / relative
    return source if source.exists() else packaged
