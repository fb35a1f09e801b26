"""One error family for everything a user can get wrong.

Every error a user can cause (a config key, an image file, a label value, a
checkpoint, a wire message) derives from :class:`MetaMorphosisError`, which is
a ``ValueError`` so that callers who only know the standard library still catch
it. The CLI turns any of them into a one-line message and exit code 2.
"""

from __future__ import annotations

__all__ = [
    "MetaMorphosisError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "RunDirError",
    "PrivacyError",
]


class MetaMorphosisError(ValueError):
    """Base class of every error caused by user input."""


class ConfigError(MetaMorphosisError):
    """A configuration key has a missing, unknown or invalid value."""


class DataError(MetaMorphosisError):
    """A dataset file, image or label is missing or malformed."""


class CheckpointError(MetaMorphosisError):
    """A checkpoint cannot be read or does not match the configuration."""


class RunDirError(MetaMorphosisError):
    """A run directory is missing files or holds inconsistent ones."""


class PrivacyError(MetaMorphosisError):
    """Privacy settings that cannot be honoured (e.g. DP with BatchNorm)."""
