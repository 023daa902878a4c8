"""Engine version pins shared by the in-engine adapters.

In-engine adapters patch internals an engine does not promise to keep: each pins the one version it
is written against and checks it when the engine builds the scheduler, so a mismatch fails at
start-up with a message saying what to install, instead of misbehaving later.
"""

from __future__ import annotations

from importlib import metadata

from ecosched.errors import EcoschedError


class EngineVersionError(EcoschedError):
    """The installed engine is not the version an adapter supports."""


def installed_version(*distributions: str) -> str | None:
    """The version of the first of `distributions` that is installed, or None."""
    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None
