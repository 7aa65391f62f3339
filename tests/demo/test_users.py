"""Demo users file: scrypt hashes, per-user salt, constant-time check, strict parsing."""

from __future__ import annotations

import hmac
import json
import stat
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.demo.errors import InvalidCredentials, UsersFileError
from mesh.demo.logic import users as users_mod
from mesh.demo.logic.users import UserStore, hash_password, new_user, write_users_file

FAST_N = 2**10  # keeps the tests quick; the format and check are the same as with 2**14


def _store(tmp_path: Path) -> tuple[Path, UserStore]:
    path = tmp_path / "users.json"
    write_users_file(
        path,
        [
            new_user("alice", "correct horse", scope=["orders:read", "orders:write"], n=FAST_N),
            new_user("bob", "battery staple", scope=["orders:read"], roles=["viewer"], n=FAST_N),
        ],
    )
    return path, UserStore.load(path)


def test_right_password_returns_the_user_with_claims(tmp_path: Path) -> None:
    _, store = _store(tmp_path)
    alice = store.authenticate("alice", "correct horse")
    assert alice.scope == ("orders:read", "orders:write")
    assert store.authenticate("bob", "battery staple").roles == ("viewer",)


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "wrong"), ("alice", ""), ("alice", "battery staple"), ("mallory", "correct horse")],
)
def test_wrong_credentials_are_rejected_without_saying_which(
    tmp_path: Path, username: str, password: str
) -> None:
    _, store = _store(tmp_path)
    with pytest.raises(InvalidCredentials) as err:
        store.authenticate(username, password)
    assert str(err.value) == "unknown user or wrong password"
    assert err.value.status == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_user_runs_scrypt_and_compare_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, store = _store(tmp_path)
    scrypt_calls: list[int] = []
    digest_calls: list[int] = []
    real_scrypt = users_mod.hashlib.scrypt
    real_compare = hmac.compare_digest

    def counting_scrypt(*args: object, **kwargs: object) -> bytes:
        scrypt_calls.append(int(kwargs["n"]))  # type: ignore[call-overload]
        return real_scrypt(*args, **kwargs)  # type: ignore[arg-type]

    def counting_compare(a: bytes, b: bytes) -> bool:
        digest_calls.append(1)
        return real_compare(a, b)

    monkeypatch.setattr(users_mod.hashlib, "scrypt", counting_scrypt)
    monkeypatch.setattr(users_mod.hmac, "compare_digest", counting_compare)
    with pytest.raises(InvalidCredentials):
        store.authenticate("nobody", "x")
    unknown = (list(scrypt_calls), len(digest_calls))
    scrypt_calls.clear()
    digest_calls.clear()
    with pytest.raises(InvalidCredentials):
        store.authenticate("alice", "x")
    assert unknown == (scrypt_calls, len(digest_calls)) == ([FAST_N], 1)


def test_every_user_gets_its_own_salt(tmp_path: Path) -> None:
    path, _ = _store(tmp_path)
    doc = json.loads(path.read_text())
    salts = {u["scrypt"]["salt"] for u in doc["users"]}
    assert len(salts) == 2
    same_password = [hash_password("same", n=FAST_N) for _ in range(2)]
    assert same_password[0].digest != same_password[1].digest


def test_file_holds_no_password_and_is_private(tmp_path: Path) -> None:
    path, _ = _store(tmp_path)
    text = path.read_text()
    assert "correct horse" not in text and "battery staple" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["users.json"]  # no temp file left


def test_default_work_factor_is_interactive_login_strength() -> None:
    pw = hash_password("pw")
    assert (pw.n, pw.r, pw.p) == (2**14, 8, 1)
    assert pw.matches("pw") and not pw.matches("pW")


def test_duplicate_username_is_refused(tmp_path: Path) -> None:
    user = new_user("alice", "a", n=FAST_N)
    with pytest.raises(UsersFileError, match="twice"):
        write_users_file(tmp_path / "u.json", [user, user])
    assert not (tmp_path / "u.json").exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "version 1"),
        (lambda d: d.pop("users"), "'users' list"),
        (lambda d: d["users"][0]["scrypt"].update(n=3), "power of two"),
        (lambda d: d["users"][0]["scrypt"].update(n=2**30), "power of two"),
        (lambda d: d["users"][0]["scrypt"].update(r=True), "integer"),
        (lambda d: d["users"][0]["scrypt"].update(salt="!!"), "base64"),
        (lambda d: d["users"][0]["scrypt"].update(hash="AAAA"), "32 bytes"),
        (lambda d: d["users"][0].update(username="Alice Smith"), "username"),
        (lambda d: d["users"][0].update(scope='bad"scope'), "scope token"),
        (lambda d: d["users"].append(d["users"][0]), "twice"),
    ],
)
def test_broken_files_fail_with_the_rule(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    path, _ = _store(tmp_path)
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(UsersFileError, match=message):
        UserStore.load(path)


def test_missing_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="cannot read"):
        UserStore.load(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_bytes(b"\xff{")
    with pytest.raises(UsersFileError, match="not valid JSON"):
        UserStore.load(tmp_path / "bad.json")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    doc=st.fixed_dictionaries(
        {"version": st.just(1)},
        optional={
            "users": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "username": _json | st.just("eve"),
                        "scope": _json,
                        "roles": _json,
                        "name": _json,
                        "scrypt": st.fixed_dictionaries(
                            {},
                            optional={
                                "n": _json | st.just(2),
                                "r": _json | st.just(1),
                                "p": _json | st.just(1),
                                "salt": _json | st.just("A" * 24),
                                "hash": _json | st.just("A" * 44),
                            },
                        ),
                    },
                )
                | _json,
                max_size=3,
            )
        },
    )
    | _json
)
def test_random_documents_raise_only_users_file_errors(tmp_path: Path, doc: object) -> None:
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(doc))
    try:
        store = UserStore.load(path)
    except UsersFileError:
        return
    with pytest.raises(InvalidCredentials):
        store.authenticate("nobody-here", "pw")


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=64))
def test_random_bytes_raise_only_users_file_errors(raw: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.json"
        path.write_bytes(raw)
        with pytest.raises(UsersFileError):
            UserStore.load(path)
