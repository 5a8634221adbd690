"""Errors of input a caller can fix, by class, so that a service maps them to an HTTP status by
type (:mod:`services.deployments`) and never by reading the message.

Each is a :class:`ValueError`, so code that catches ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["InputError", "UnknownFindingError", "NoContrastError"]


class InputError(ValueError):
    """Input the caller can fix; the message says what was wrong and how to fix it."""


class UnknownFindingError(InputError):
    """A finding name that is not one of NIH's 14, or one the service has no reference for."""


class NoContrastError(InputError):
    """An image without contrast (constant): registration and the classifier need a radiograph."""
