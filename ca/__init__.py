"""meshid's certificate authority: issues X.509-SVIDs, keeps a registry, revokes, publishes.

The public entry point is :class:`ca.authority.CertificateAuthority`; every error it raises
derives from :class:`ca.errors.CAError`.
"""

from ca.authority import CertificateAuthority
from ca.errors import CAError
from ca.svid import IssuedSVID

__all__ = ["CAError", "CertificateAuthority", "IssuedSVID"]
