"""The root of the ``mesh`` exception tree.

Every error the package raises derives from :class:`MeshError` and names, in its type, the
rule that failed. Errors from third-party libraries are translated at the boundary
(``raise ... from err``) so callers never need to know which library was underneath.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error raised by ``mesh``."""


class InvalidSpiffeIdError(MeshError, ValueError):
    """A string is not a valid SPIFFE ID, trust domain or service name."""
