"""The auth service's one job: check a password and mint a user token for the edge."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mesh.demo.logic.users import UserStore
from mesh.identity.spiffeid import SpiffeId

DEFAULT_TTL_SECONDS = 900


class UserTokenMinter(Protocol):
    """What auth needs from ``mesh.tokens.signer.TokenSigner``."""

    def user_token(
        self,
        sub: str,
        aud: Sequence[str | SpiffeId],
        *,
        name: str | None = ...,
        scope: str | None = ...,
        roles: Sequence[str] | None = ...,
        ttl: int = ...,
        jkt: str | None = ...,
    ) -> str: ...


@dataclass(frozen=True, slots=True)
class LoginResult:
    token: str = field(repr=False)
    subject: str
    scope: str
    expires_at: int


class LoginService:
    """Checks credentials against the users file; mints a user token meant for ``audience``."""

    def __init__(
        self,
        users: UserStore,
        minter: UserTokenMinter,
        audience: Sequence[SpiffeId],
        *,
        ttl: int = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not audience:
            raise ValueError("a user token needs at least one audience")
        if ttl <= 0:
            raise ValueError("the user token lifetime must be positive")
        self._users = users
        self._minter = minter
        self._audience = tuple(audience)
        self._ttl = ttl
        self._clock = clock

    def login(self, username: str, password: str, *, jkt: str | None = None) -> LoginResult:
        """A fresh user token, or InvalidCredentials (same cost for unknown users).

        ``jkt``: the thumbprint of the DPoP key the client proved with this login; the token
        is bound to it (``cnf.jkt``) and the edge accepts it only with proofs made with that
        key (spec 4.7).
        """
        user = self._users.authenticate(username, password)
        issued = int(self._clock())
        token = self._minter.user_token(
            user.username,
            self._audience,
            name=user.name,
            scope=user.scope_string or None,
            roles=list(user.roles) or None,
            ttl=self._ttl,
            jkt=jkt,
        )
        return LoginResult(
            token=token, subject=user.username, scope=user.scope_string,
            expires_at=issued + self._ttl,
        )
