"""The verified caller of the call being handled, in a context variable.

:func:`current_call` is the one documented way a handler reads who called it, and
:func:`require_user` the way it insists on an end user. The server's handler wrappers set the
variable for every call (to ``None`` for calls that carry no token, such as health checks) and
reset it afterwards; channels read it to wrap the inbound token for the next hop.

gRPC runs each handler in a context the wrapper shares (grpcio >= 1.59). A thread you start
yourself does not inherit it: run the work with ``contextvars.copy_context().run(fn)`` (or use
``asyncio.to_thread``, which copies it), else the next hop sees no inbound user.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesh.errors import UserRequiredError

if TYPE_CHECKING:
    from mesh.tokens.verify import VerifiedChain

_CURRENT: ContextVar[VerifiedChain | None] = ContextVar("mesh_current_call", default=None)


@dataclass(frozen=True, slots=True)
class User:
    """The end user of a verified call, from the user token at the bottom of its chain.

    ``id`` is the token's ``sub``; ``scopes`` its space-separated ``scope``; ``roles`` its
    ``roles``; ``claims`` the whole user token, read-only; ``jkt`` the thumbprint of the DPoP
    key the token is bound to (``cnf.jkt``, spec 4.7), None if unbound. ``str(user)`` is the id.
    """

    id: str
    name: str | None
    scopes: frozenset[str]
    roles: tuple[str, ...]
    claims: Mapping[str, Any] = field(repr=False)
    jkt: str | None = None

    def __str__(self) -> str:
        return self.id


def current_call() -> VerifiedChain | None:
    """The verified chain of the call being handled, or None outside a verified call."""
    return _CURRENT.get()


def require_user() -> User:
    """The end user of the call being handled.

    Raises :class:`mesh.errors.UserRequiredError` when the call carries none (a service calling
    as itself, a health check, or code outside a handler); raised in a handler, it ends the
    call with ``PERMISSION_DENIED`` / ``USER_REQUIRED``.
    """
    chain = _CURRENT.get()
    if chain is None or chain.user is None:
        raise UserRequiredError(
            "this method acts for an end user, and the call carries none: the caller called "
            "as itself (an app token) or the call was not verified (spec 4.6)"
        )
    claims = chain.user_claims
    scope = claims.get("scope")
    roles = claims.get("roles")
    name = claims.get("name")
    return User(
        id=chain.user,
        name=name if isinstance(name, str) else None,
        scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
        roles=tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, (list, tuple))
        else (),
        claims=claims,
        jkt=chain.user_jkt,
    )


def enter_call(chain: VerifiedChain | None) -> Token[VerifiedChain | None]:
    """Set the current call (handler wrappers only); pass the result to :func:`leave_call`."""
    return _CURRENT.set(chain)


def leave_call(token: Token[VerifiedChain | None]) -> None:
    try:
        _CURRENT.reset(token)
    except ValueError:
        # A generator finished in another context (e.g. closed by the GC): clear instead.
        _CURRENT.set(None)
