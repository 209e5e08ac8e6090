"""Exceptions raised by the data layer.

One base type (:class:`DataLayoutError`, a ``ValueError``) so that callers and tests can catch every
"your data is not where / what it should be" problem in one place, while the message says exactly what
is wrong and how to fix it.
"""

from __future__ import annotations


class DataLayoutError(ValueError):
    """The on-disk dataset is missing or does not follow the expected layout."""


class CorruptImageError(DataLayoutError):
    """An image file exists but cannot be decoded; the message names the file."""
