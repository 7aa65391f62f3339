"""Concurrency and atomicity: twenty ca-issue processes at once, threads, torn reads, crashes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca import authority
from ca.authority import CertificateAuthority
from ca.registry import CertRecord

CA_ISSUE = Path(sys.executable).parent / "ca-issue"


def _assert_consistent(ca_dir: Path, expected_certs: int) -> list[CertRecord]:
    """Registry, bundle and CRL agree with each other and with the number of operations."""
    with CertificateAuthority.open(ca_dir) as ca:
        records = ca.records()
        sequence = ca._registry.get_meta("spiffe_sequence")
    assert len(records) == expected_certs
    assert len({r.serial for r in records}) == expected_certs
    bundle = json.loads((ca_dir / "bundle.spiffe.json").read_text())
    kids = {k["kid"] for k in bundle["keys"] if k["use"] == "jwt-svid"}
    assert kids == {r.thumbprint for r in records if r.status == "valid"}
    assert str(bundle["spiffe_sequence"]) == sequence
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert {e.serial_number for e in crl} == {r.serial for r in records if r.status == "revoked"}
    assert not list(ca_dir.glob(".*.tmp"))
    return records


@pytest.mark.slow
def test_twenty_ca_issue_processes_at_once(ca_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca = ca_factory(intermediate=True)
    start_sequence = json.loads(ca.bundle_path.read_text())["spiffe_sequence"]
    out = tmp_path / "out"
    # Ten names, each issued by two racing processes: the files each name ends up with must
    # be the pair of the last committed issuance, never a mix of two.
    names = [f"svc-{i % 10}" for i in range(20)]
    procs = [
        subprocess.Popen(
            [str(CA_ISSUE), name, "--ca-dir", str(ca.ca_dir), "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    results = [(*p.communicate(timeout=90), p.returncode) for p in procs]
    assert [rc for _, _, rc in results] == [0] * 20, [err for _, err, _ in results]

    records = _assert_consistent(ca.ca_dir, 20)
    bundle = json.loads(ca.bundle_path.read_text())
    assert bundle["spiffe_sequence"] == start_sequence + 20
    for i in range(10):
        name = f"svc-{i}"
        mine = [r for r in records if r.name == name]
        assert len(mine) == 2
        leaf = x509.load_pem_x509_certificates((out / name / "svid.pem").read_bytes())[0]
        key = serialization.load_pem_private_key((out / name / "svid_key.pem").read_bytes(), None)
        assert leaf.serial_number == mine[-1].serial  # the last commit wrote the files
        assert key.public_key() == leaf.public_key()


def test_threads_sharing_and_not_sharing_a_ca(ca_factory) -> None:  # type: ignore[no-untyped-def]
    ca = ca_factory()
    errors: list[BaseException] = []

    def shared(i: int) -> None:
        try:
            for j in range(5):
                ca.issue(f"t{i}-{j}")
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def own(i: int) -> None:
        try:
            with CertificateAuthority.open(ca.ca_dir) as mine:
                mine.issue_many([f"o{i}-{j}" for j in range(5)])
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    victims = ca.issue_many([f"v{i}" for i in range(4)])

    def revoker(i: int) -> None:
        try:
            with CertificateAuthority.open(ca.ca_dir) as mine:
                mine.revoke(name=f"v{i}", reason="superseded")
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=shared, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=own, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=revoker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    records = _assert_consistent(ca.ca_dir, 44)
    revoked = {r.serial for r in records if r.status == "revoked"}
    assert revoked == {v.serial for v in victims}


def test_readers_never_see_a_torn_file(ca_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca = ca_factory()
    out = tmp_path / "out"
    ca.issue("orders", out_dir=out)
    stop = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(json.loads(ca.bundle_path.read_text())["spiffe_sequence"])
                x509.load_pem_x509_crl(ca.crl_path.read_bytes())
                x509.load_pem_x509_certificates((out / "orders" / "svid.pem").read_bytes())
                serialization.load_pem_private_key(
                    (out / "orders" / "svid_key.pem").read_bytes(), None
                )
            except (ValueError, OSError) as err:
                problems.append(repr(err))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(40):
            ca.issue("orders", out_dir=out)
    finally:
        stop.set()
        t.join()
    assert problems == []
    assert seen and seen == sorted(seen)  # the sequence never goes backwards


def test_failure_while_publishing_rolls_everything_back(
    ca_factory: Callable[..., CertificateAuthority],
    tmp_path: Path,
    snapshot: Callable[[Path], dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = ca_factory()
    out = tmp_path / "out"
    ca.issue("orders", out_dir=out)
    before_ca, before_out = snapshot(ca.ca_dir), snapshot(out)

    def boom(*args: object, **kwargs: object) -> bytes:
        raise KeyboardInterrupt  # the harshest interruption: not even an Exception

    monkeypatch.setattr(authority.BundleRenderer, "render", boom)
    with pytest.raises(KeyboardInterrupt):
        ca.issue_many(["orders", "payments"], out_dir=out)
    assert snapshot(ca.ca_dir) == before_ca
    assert snapshot(out) == before_out
    assert not list(out.rglob(".*.tmp")) and not list(ca.ca_dir.glob(".*.tmp"))
    monkeypatch.undo()
    ca.issue("payments")  # the CA is still usable: the lock and the transaction were released
    _assert_consistent(ca.ca_dir, 2)
