"""Demo users: a JSON file of scrypt password hashes, and a constant-time password check.

Each user has its own random salt. A login for an unknown user runs the same scrypt as a known
one and compares against a dummy hash with ``hmac.compare_digest``, so the answer's timing does
not tell whether the user exists. The file holds hashes only (mode 0600, replaced atomically).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.demo.errors import InvalidCredentials, UsersFileError
from mesh.fsio import write_atomic

FORMAT_VERSION = 1
# scrypt work factor: 16 MiB of memory and tens of milliseconds per check (RFC 7914 section 2
# suggests N=2^14 with r=8, p=1 for interactive logins).
DEFAULT_N = 2**14
DEFAULT_R = 8
DEFAULT_P = 1
HASH_BYTES = 32
SALT_BYTES = 16
# Bounds on what a users file may ask for, so a tampered file cannot make a login allocate
# gigabytes or spin for minutes.
_MAX_N = 2**17
_MAX_R = 16
_MAX_P = 4
_MAX_PASSWORD_BYTES = 1024
_USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 section 3.3 scope-token


def validate_username(username: str) -> str:
    if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
        raise UsersFileError(
            f"username {username!r} is invalid: use 1 to 64 characters of a-z, 0-9, '.', '_', '-'"
        )
    return username


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """An scrypt hash with its parameters."""

    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    n: int = DEFAULT_N
    r: int = DEFAULT_R
    p: int = DEFAULT_P

    def __post_init__(self) -> None:
        if self.n < 2 or self.n > _MAX_N or self.n & (self.n - 1):
            raise UsersFileError(f"scrypt N must be a power of two between 2 and {_MAX_N}")
        if not 1 <= self.r <= _MAX_R or not 1 <= self.p <= _MAX_P:
            raise UsersFileError(f"scrypt r must be 1..{_MAX_R} and p 1..{_MAX_P}")
        if len(self.salt) < SALT_BYTES:
            raise UsersFileError(f"scrypt salt must be at least {SALT_BYTES} bytes")
        if len(self.digest) != HASH_BYTES:
            raise UsersFileError(f"scrypt hash must be {HASH_BYTES} bytes")

    def compute(self, password: str) -> bytes:
        """scrypt of ``password`` under this hash's salt and parameters."""
        secret = password.encode("utf-8")[: _MAX_PASSWORD_BYTES + 1]
        return hashlib.scrypt(
            secret,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=256 * self.r * self.n + 2**20,
            dklen=HASH_BYTES,
        )

    def matches(self, password: str) -> bool:
        return hmac.compare_digest(self.compute(password), self.digest)


def hash_password(
    password: str, *, salt: bytes | None = None, n: int = DEFAULT_N, r: int = DEFAULT_R,
    p: int = DEFAULT_P,
) -> PasswordHash:
    """A fresh scrypt hash of ``password`` with a random per-user salt."""
    if not password:
        raise UsersFileError("a demo user's password must not be empty")
    if len(password.encode("utf-8")) > _MAX_PASSWORD_BYTES:
        raise UsersFileError(f"a password must be at most {_MAX_PASSWORD_BYTES} bytes")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    placeholder = PasswordHash(salt=salt, digest=bytes(HASH_BYTES), n=n, r=r, p=p)
    return PasswordHash(salt=salt, digest=placeholder.compute(password), n=n, r=r, p=p)


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A user as the auth service knows it: identity claims plus the password hash."""

    username: str
    name: str
    scope: tuple[str, ...]
    roles: tuple[str, ...]
    password: PasswordHash = field(repr=False)

    def __post_init__(self) -> None:
        validate_username(self.username)
        for token in self.scope:
            if not _SCOPE_TOKEN_RE.fullmatch(token):
                raise UsersFileError(f"user {self.username}: scope {token!r} is not a scope token")

    @property
    def scope_string(self) -> str:
        return " ".join(self.scope)


def new_user(
    username: str, password: str, *, name: str = "", scope: Iterable[str] = (),
    roles: Iterable[str] = (), n: int = DEFAULT_N,
) -> DemoUser:
    return DemoUser(
        username=validate_username(username),
        name=name or username,
        scope=tuple(scope),
        roles=tuple(roles),
        password=hash_password(password, n=n),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise UsersFileError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise UsersFileError(f"{what} is not valid base64") from err


def _user_to_json(user: DemoUser) -> dict[str, Any]:
    pw = user.password
    return {
        "username": user.username,
        "name": user.name,
        "scope": user.scope_string,
        "roles": list(user.roles),
        "scrypt": {"n": pw.n, "r": pw.r, "p": pw.p, "salt": _b64(pw.salt), "hash": _b64(pw.digest)},
    }


def _user_from_json(entry: Any, index: int) -> DemoUser:
    where = f"users[{index}]"
    if not isinstance(entry, dict):
        raise UsersFileError(f"{where} must be an object")
    scrypt = entry.get("scrypt")
    if not isinstance(scrypt, dict):
        raise UsersFileError(f"{where}.scrypt must be an object")
    params: list[int] = []
    for key in ("n", "r", "p"):
        value = scrypt.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise UsersFileError(f"{where}.scrypt.{key} must be an integer")
        params.append(value)
    scope, roles, name = entry.get("scope", ""), entry.get("roles", []), entry.get("name", "")
    if not isinstance(scope, str) or not isinstance(name, str):
        raise UsersFileError(f"{where}: scope and name must be strings")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise UsersFileError(f"{where}.roles must be a list of strings")
    password = PasswordHash(
        salt=_unb64(scrypt.get("salt"), f"{where}.scrypt.salt"),
        digest=_unb64(scrypt.get("hash"), f"{where}.scrypt.hash"),
        n=params[0],
        r=params[1],
        p=params[2],
    )
    username = entry.get("username")
    if not isinstance(username, str):
        raise UsersFileError(f"{where}.username must be a string")
    return DemoUser(
        username=validate_username(username),
        name=name or username,
        scope=tuple(scope.split()),
        roles=tuple(roles),
        password=password,
    )


def write_users_file(path: Path, users: Iterable[DemoUser]) -> None:
    """Write the users file atomically (temp file in the same folder, fsync, os.replace), 0600."""
    users = list(users)
    names = [u.username for u in users]
    if len(set(names)) != len(names):
        raise UsersFileError("the users file must not list a username twice")
    data = json.dumps(
        {"version": FORMAT_VERSION, "users": [_user_to_json(u) for u in users]}, indent=2
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, 0o600)


class UserStore:
    """The demo users, loaded once; :meth:`authenticate` is the only way to use a hash."""

    def __init__(self, users: Iterable[DemoUser]) -> None:
        self._users: Mapping[str, DemoUser] = {u.username: u for u in users}
        # The dummy hash uses the strongest parameters in the file, so an unknown user never
        # costs less than a known one.
        strongest = max(
            (u.password for u in self._users.values()),
            key=lambda pw: (pw.n * pw.r * pw.p),
            default=PasswordHash(salt=bytes(SALT_BYTES), digest=bytes(HASH_BYTES)),
        )
        self._dummy = PasswordHash(
            salt=secrets.token_bytes(SALT_BYTES),
            digest=secrets.token_bytes(HASH_BYTES),
            n=strongest.n,
            r=strongest.r,
            p=strongest.p,
        )

    @classmethod
    def load(cls, path: Path) -> UserStore:
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise UsersFileError(f"cannot read the users file {path}: {err.strerror}") from err
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise UsersFileError(f"the users file {path} is not valid JSON") from err
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise UsersFileError(f"the users file {path} is not a version {FORMAT_VERSION} file")
        entries = doc.get("users")
        if not isinstance(entries, list):
            raise UsersFileError(f"the users file {path} has no 'users' list")
        users = [_user_from_json(entry, i) for i, entry in enumerate(entries)]
        if len({u.username for u in users}) != len(users):
            raise UsersFileError(f"the users file {path} lists a username twice")
        return cls(users)

    def __contains__(self, username: object) -> bool:
        return username in self._users

    def __len__(self) -> int:
        return len(self._users)

    def authenticate(self, username: str, password: str) -> DemoUser:
        """The user if the password matches; else InvalidCredentials after the same work."""
        user = self._users.get(username) if isinstance(username, str) else None
        if not isinstance(password, str):
            password = ""
        reference = user.password if user is not None else self._dummy
        ok = reference.matches(password)
        if user is None or not ok:
            raise InvalidCredentials("unknown user or wrong password")
        return user
