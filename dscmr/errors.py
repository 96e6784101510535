"""Project exceptions.

Every error a user can cause (a missing file, a wrong shape, a bad config key, a corrupt image) is raised as a
:class:`DscmrError` subclass whose message says what was wrong and what to do. The CLI prints the message on one
line and exits with code 2; library users can catch :class:`DscmrError`.
"""

from __future__ import annotations


class DscmrError(Exception):
    """Base class for errors caused by user input."""


class ConfigError(DscmrError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(DscmrError):
    """A dataset is missing, malformed or inconsistent."""


class CheckpointError(DscmrError):
    """A run folder or weights file is missing, incomplete or incompatible."""


class IndexBundleError(DscmrError):
    """An index bundle is missing, truncated or does not match the run used to query it."""


class QueryError(DscmrError):
    """A search query is empty, unreadable or otherwise unusable (an unknown id, a raw query for a feature run)."""


class UsageError(DscmrError):
    """A command argument or API option is invalid: out of range, malformed, unknown, or in conflict with another.

    Examples: ``--n 0`` on a benchmark, ``--modality audio``, an unknown hash method in a build spec,
    ``--no-float`` without ``--binary``.
    """
