"""The errors kdutils raises on purpose, and the exit status each gets.

A bad argument (a name, a value, a combination) is a ``ValueError``: the
command line prints one line and exits with status 2, like a usage error.
Anything wrong with the machine or with files on it (data missing or
corrupt, a cache that cannot be written, no space left, a device that is not
there, a run in progress elsewhere) is an :class:`EnvironmentProblem`: one
line with the path or the device and what to do, exit status 1.
"""

from __future__ import annotations

__all__ = [
    "EnvironmentProblem",
    "CorruptArtifact",
    "CacheUnwritable",
    "DeviceUnavailable",
]


class EnvironmentProblem(RuntimeError):
    """The machine or a file on it, not the command, is the problem (exit 1)."""


class CorruptArtifact(EnvironmentProblem):
    """A cached file is missing, truncated or differs from its checksum."""


class CacheUnwritable(EnvironmentProblem):
    """The run cache (``KD_CACHE_DIR``) cannot be created or written."""


class DeviceUnavailable(EnvironmentProblem):
    """The device asked for (``--device cuda``) is not on this machine."""
