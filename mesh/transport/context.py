"""The verified caller of the call being handled, in a context variable.

:func:`current_call` is the one documented way a handler reads who called it. The server
interceptors set the variable for every call (to ``None`` for calls that carry no token, such
as health checks) and reset it afterwards; the client interceptors read it to wrap the inbound
token for the next hop.

gRPC runs each handler in a context the interceptor shares (grpcio >= 1.59). A thread you
start yourself does not inherit it: run the work with ``contextvars.copy_context().run(fn)``
(or use ``asyncio.to_thread``, which copies it), else the next hop sees no inbound user.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.tokens.verify import VerifiedChain

_CURRENT: ContextVar[VerifiedChain | None] = ContextVar("mesh_current_call", default=None)


def current_call() -> VerifiedChain | None:
    """The verified chain of the call being handled, or None outside a verified call."""
    return _CURRENT.get()


def enter_call(chain: VerifiedChain | None) -> Token[VerifiedChain | None]:
    """Set the current call (interceptors only); pass the result to :func:`leave_call`."""
    return _CURRENT.set(chain)


def leave_call(token: Token[VerifiedChain | None]) -> None:
    try:
        _CURRENT.reset(token)
    except ValueError:
        # A generator finished in another context (e.g. closed by the GC): clear instead.
        _CURRENT.set(None)
