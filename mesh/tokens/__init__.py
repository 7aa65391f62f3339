"""meshid tokens: user, app and nested app-asserted JWS, verified locally as a chain.

docs/spec.md sections 3 and 4 are the contract. python-jose is used only inside
:mod:`mesh.tokens.jose`; everything that decides what to trust is ours.
"""

from mesh.identity.bundle import BundleKey, BundleSource, FileBundleSource
from mesh.tokens.cache import VerifiedTokenCache
from mesh.tokens.claims import APP, APP_ASSERTED, USER
from mesh.tokens.errors import BundleError, SigningError, TokenError
from mesh.tokens.result import Hop, VerifiedChain
from mesh.tokens.signer import TokenSigner
from mesh.tokens.verify import ChainVerifier, MaxLifetime, VerifyLimits

__all__ = [
    "APP",
    "APP_ASSERTED",
    "USER",
    "BundleError",
    "BundleKey",
    "BundleSource",
    "ChainVerifier",
    "FileBundleSource",
    "Hop",
    "MaxLifetime",
    "SigningError",
    "TokenError",
    "TokenSigner",
    "VerifiedChain",
    "VerifiedTokenCache",
    "VerifyLimits",
]
