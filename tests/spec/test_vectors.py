"""The conformance vectors in ``spec/vectors`` (docs/spec.md section 10), checked three ways.

Every committed vector is run through :class:`mesh.tokens.ChainVerifier` (without a cache, and
with one, twice, so a cached chain verdict must reach the same outcome) and through
``mesh token verify --json`` in-process; a sample is replayed through the command line as a
subprocess. The set is checked for completeness: every reason code the verifier can raise (read
from the verifier's source) has a reject vector, and every accept path has an accept vector.
The generator itself is run too, into a temporary folder, and must make the committed set.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca.authority import CertificateAuthority
from ca.errors import InvalidValidity
from mesh.cli import main
from mesh.errors import CallRefused, Reason
from mesh.identity import errors as identity_errors
from mesh.identity.bundle import FileBundleSource
from mesh.identity.certs import load_pem_chain
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens import ChainVerifier, MaxLifetime, VerifiedTokenCache, VerifyLimits
from mesh.tokens import errors as token_errors
from mesh.tokens.dpop import ProofVerifier

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "spec" / "vectors"
FILES = sorted(VECTORS.glob("*.json"))
#: The modules of the verifier: every ``raise X(...)`` in them with X a CallRefused is a reason
#: code a verifier can produce.
VERIFIER_SOURCES = ("mesh/tokens/verify.py", "mesh/tokens/jose.py", "mesh/tokens/claims.py",
                    "mesh/identity/bundle.py", "mesh/tokens/dpop.py")
#: reasons that need state across calls, which one vector cannot show: tested by the suite
#: (tests/tokens/test_dpop.py, tests/tokens/test_replay.py) and, for replays, below
STATEFUL = {"DPOP_REPLAYED", "DPOP_REPLAY_CACHE_FULL"}
REQUIRED = {"name", "description", "now", "audience", "token", "bundle", "expect"}
OPTIONAL = {"peer_chain_pem", "crl_pem", "limits", "method", "dpop"}
ON_REJECT = {"reason", "status", "hop"}
ON_ACCEPT = {"user", "chain"}
LIMITS = {"max_depth", "max_size", "leeway", "max_lifetime"}
LIFETIME_KINDS = {"user", "app", "app-asserted"}


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _expected(doc: dict[str, Any]) -> dict[str, Any]:
    keys = ("expect", *sorted(ON_REJECT)) if doc["expect"] == "reject" else (
        "expect", *sorted(ON_ACCEPT))
    return {k: doc[k] for k in keys}


def _files(doc: dict[str, Any], folder: Path) -> dict[str, Path]:
    out = {"bundle": folder / "bundle.spiffe.json", "token": folder / "token"}
    out["bundle"].write_text(json.dumps(doc["bundle"]))
    out["token"].write_text(doc["token"])
    if "crl_pem" in doc:
        out["crl"] = folder / "crl.pem"
        out["crl"].write_text(doc["crl_pem"])
    if "peer_chain_pem" in doc:
        out["peer"] = folder / "peer.pem"
        out["peer"].write_text(doc["peer_chain_pem"])
    return out


def _verify(doc: dict[str, Any], folder: Path, *, cached: bool) -> Iterator[dict[str, Any]]:
    """The outcome(s) of ChainVerifier on ``doc``: one, or two (cold then warm) if cached."""
    files = _files(doc, folder)
    now = doc["now"]

    def clock() -> float:
        return float(now)

    bundle = FileBundleSource(files["bundle"], files.get("crl"), clock=clock)
    raw = doc.get("limits", {})
    limits = VerifyLimits(
        max_size=raw.get("max_size", 8192), max_depth=raw.get("max_depth", 4),
        leeway=raw.get("leeway", 30),
        max_lifetime=MaxLifetime(**{k.replace("-", "_"): v
                                    for k, v in raw.get("max_lifetime", {}).items()}),
    )
    cache = VerifiedTokenCache(clock=clock) if cached else None
    verifier = ChainVerifier(SpiffeId.parse(doc["audience"]), bundle, limits=limits,
                             cache=cache, clock=clock)
    peer, intermediates = None, []
    if "peer_chain_pem" in doc:
        peer, *intermediates = load_pem_chain(doc["peer_chain_pem"].encode())
    for _ in range(2 if cached else 1):
        try:
            result = verifier.verify(doc["token"], peer, peer_intermediates=intermediates)
            if "method" in doc:
                # A new edge port each time: the same proof twice at one port is a replay.
                ProofVerifier(verifier.own_id, clock=clock).check_call(
                    result, "DPoP", doc.get("dpop"), doc["method"])
        except CallRefused as err:
            yield {"expect": "reject", "reason": str(err.reason), "status": err.status.name,
                   "hop": err.hop}
        else:
            yield {"expect": "accept", "user": result.user,
                   "chain": [str(s) for s in result.chain]}


def _cli_args(doc: dict[str, Any], files: dict[str, Path]) -> list[str]:
    args = ["token", "verify", "-", "--json", "--audience", doc["audience"],
            "--at", str(doc["now"]), "--bundle", str(files["bundle"])]
    if "crl" in files:
        args += ["--crl", str(files["crl"])]
    if "peer" in files:
        args += ["--peer-cert", str(files["peer"])]
    limits = doc.get("limits", {})
    for name, flag in (("max_size", "--max-size"), ("max_depth", "--max-depth"),
                       ("leeway", "--leeway")):
        if name in limits:
            args += [flag, str(limits[name])]
    for kind, seconds in limits.get("max_lifetime", {}).items():
        args += ["--max-lifetime", f"{kind}={seconds}"]
    if "method" in doc:
        args += ["--method", doc["method"]]
    if "dpop" in doc:
        args += ["--dpop", doc["dpop"]]
    return args


def _cli_outcome(printed: dict[str, Any]) -> dict[str, Any]:
    if printed["result"] == "reject":
        return {"expect": "reject", "reason": printed["reason"], "status": printed["status"],
                "hop": printed["hop"]}
    return {"expect": "accept", "user": printed["user"], "chain": printed["chain"]}


# --- the files themselves ------------------------------------------------------------------


def test_there_are_vectors() -> None:
    assert len(FILES) > 100


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vector_shape(path: Path) -> None:
    doc = _load(path)
    assert doc["name"] == path.stem
    assert doc.keys() >= REQUIRED
    outcome = ON_REJECT if doc["expect"] == "reject" else ON_ACCEPT
    assert doc["expect"] in ("accept", "reject")
    assert doc.keys() <= REQUIRED | OPTIONAL | outcome, sorted(doc.keys())
    assert outcome <= doc.keys()
    assert type(doc["now"]) is int
    assert isinstance(doc["token"], str)
    assert SpiffeId.parse(doc["audience"])
    assert isinstance(doc["bundle"]["keys"], list)
    assert doc.get("limits", {}).keys() <= LIMITS
    assert doc.get("limits", {}).get("max_lifetime", {}).keys() <= LIFETIME_KINDS
    if "dpop" in doc:
        assert "method" in doc and isinstance(doc["dpop"], str)
    if "method" in doc:
        assert "peer_chain_pem" not in doc  # DPoP is for edge ports
        assert doc["method"].startswith("/") and doc["method"].count("/") == 2
    if doc["expect"] == "reject":
        reason = Reason(doc["reason"])
        assert doc["status"] == reason.status.name
        assert doc["hop"] is None or type(doc["hop"]) is int
    else:
        assert doc["user"] is None or isinstance(doc["user"], str)
        assert all(SpiffeId.parse(s) for s in doc["chain"])


# --- run through the verifier and the command line -------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vector_against_the_verifier(path: Path, tmp_path: Path) -> None:
    doc = _load(path)
    want = _expected(doc)
    assert list(_verify(doc, tmp_path, cached=False)) == [want]
    # cold then warm: a cached verdict must not change the outcome
    assert list(_verify(doc, tmp_path, cached=True)) == [want, want]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vector_through_mesh_token_verify(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = _load(path)
    files = _files(doc, tmp_path)
    with files["token"].open() as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        code = main(_cli_args(doc, files))
    text = capsys.readouterr().out
    assert _cli_outcome(json.loads(text)) == _expected(doc)
    assert code == (0 if doc["expect"] == "accept" else 1)
    parts = doc["token"].split(".")
    if len(parts) == 3 and len(parts[2]) > 20:
        assert parts[2] not in text  # no signature is ever printed


DPOP_ACCEPTS = sorted(p.stem for p in FILES
                      if "method" in _load(p) and _load(p)["expect"] == "accept")


@pytest.mark.parametrize("name", DPOP_ACCEPTS)
def test_a_vectors_proof_is_single_use(name: str, tmp_path: Path) -> None:
    """The same edge call twice at one port: the first is accepted, the second is a replay."""
    doc = _load(VECTORS / f"{name}.json")
    files = _files(doc, tmp_path)
    clock = lambda: float(doc["now"])  # noqa: E731
    verifier = ChainVerifier(SpiffeId.parse(doc["audience"]),
                             FileBundleSource(files["bundle"], files.get("crl"), clock=clock),
                             limits=VerifyLimits(max_lifetime=MaxLifetime(
                                 **{k.replace("-", "_"): v for k, v in
                                    doc.get("limits", {}).get("max_lifetime", {}).items()})),
                             clock=clock)
    port = ProofVerifier(verifier.own_id, clock=clock)
    chain = verifier.verify(doc["token"], None)
    assert port.check_call(chain, "DPoP", doc["dpop"], doc["method"]) is not None
    with pytest.raises(token_errors.DpopReplayed):
        port.check_call(verifier.verify(doc["token"], None), "DPoP", doc["dpop"], doc["method"])


SUBPROCESS_SAMPLE = (
    "accept-edge-user-token",
    "reject-dpop-key-mismatch",
    "reject-dpop-missing",
    "accept-chain-5-signatures",
    "accept-intermediate-ca-peer-leaf-only",
    "accept-lifetime-within-raised-limit",
    "reject-peer-revoked",
    "reject-inner-revoked-key-old-bundle",
    "reject-depth-over-max-depth-limit",
    "reject-signature-der-encoded",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS_SAMPLE)
def test_vector_replayed_in_a_subprocess(name: str, tmp_path: Path) -> None:
    doc = _load(VECTORS / f"{name}.json")
    files = _files(doc, tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "mesh.cli", *_cli_args(doc, files)], input=doc["token"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == (0 if doc["expect"] == "accept" else 1), out.stderr
    assert _cli_outcome(json.loads(out.stdout)) == _expected(doc)


@pytest.mark.slow
def test_vector_replayed_with_the_bundle_from_mesh_ca_dir(tmp_path: Path) -> None:
    """``mesh token verify`` without --bundle reads $MESH_CA_DIR/bundle.spiffe.json and
    crl.pem: a revocation vector only rejects if the CRL was found there."""
    doc = _load(VECTORS / "reject-inner-revoked-key-old-bundle.json")
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / "bundle.spiffe.json").write_text(json.dumps(doc["bundle"]))
    (ca_dir / "crl.pem").write_text(doc["crl_pem"])
    peer = tmp_path / "peer.pem"
    peer.write_text(doc["peer_chain_pem"])
    args = [sys.executable, "-m", "mesh.cli", "token", "verify", "-", "--json", "--audience",
            doc["audience"], "--at", str(doc["now"]), "--peer-cert", str(peer)]
    env = {"PATH": "/usr/bin:/bin", "MESH_CA_DIR": str(ca_dir)}
    out = subprocess.run(args, input=doc["token"], capture_output=True, text=True,
                         timeout=60, check=False, env=env)
    assert out.returncode == 1, out.stderr
    assert _cli_outcome(json.loads(out.stdout)) == _expected(doc)
    # the same without the CRL in the folder: a usage error, not a silent pass
    (ca_dir / "crl.pem").unlink()
    out = subprocess.run(args, input=doc["token"], capture_output=True, text=True,
                         timeout=60, check=False, env=env)
    assert out.returncode == 2
    assert "crl.pem is missing" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_fixed_now_matters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Negative control for the clock: an accept vector verified at the real time instead of its
    ``now`` is refused (its tokens are not valid yet, or long expired)."""
    doc = _load(VECTORS / "accept-chain-3-signatures.json")
    files = _files(doc, tmp_path)
    args = [a for a in _cli_args(doc, files) if a not in ("--at", str(doc["now"]))]
    with files["token"].open() as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert main(args) == 1
    assert json.loads(capsys.readouterr().out)["reason"] in (
        "TOKEN_NOT_YET_VALID", "TOKEN_EXPIRED")


# --- completeness -------------------------------------------------------------------------


def _verifier_reasons() -> set[str]:
    """Every reason of a ``raise X(...)`` in the verifier's modules with X a CallRefused."""
    namespace = {**vars(identity_errors), **vars(token_errors)}
    reasons: set[str] = set()
    for source in VERIFIER_SOURCES:
        tree = ast.parse((ROOT / source).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                cls = namespace.get(func.id) if isinstance(func, ast.Name) else None
                if isinstance(cls, type) and issubclass(cls, CallRefused):
                    reasons.add(str(cls.reason))
    return reasons


def test_every_reason_the_verifier_raises_has_a_reject_vector() -> None:
    raised = _verifier_reasons()
    # a sanity floor, so a broken source scan cannot pass vacuously
    assert {"TOKEN_EXPIRED", "CHAIN_BROKEN", "CERT_REVOKED", "TOKEN_MISSING",
            "DPOP_KEY_MISMATCH", "USER_TOKEN_UNBOUND"} <= raised
    assert not raised & STATEFUL  # raised by the replay cache, not by a one-call rule
    dpop_codes = {r.value for r in Reason if r.value.startswith("DPOP_")} - STATEFUL
    assert dpop_codes <= raised, "a DPoP reason the proof checker never raises"
    covered = {_load(p)["reason"] for p in FILES if _load(p)["expect"] == "reject"}
    assert raised - covered == set(), "reason codes without a reject vector"
    assert covered - raised == set(), "vectors expecting reasons the verifier never raises"


def _signatures(token: str) -> list[str]:
    """The typ of each layer, outermost first (decoded without verifying)."""
    import base64

    kinds = []
    while token:
        header, payload, _ = token.split(".")
        kinds.append(json.loads(base64.urlsafe_b64decode(header + "=="))["typ"])
        token = json.loads(base64.urlsafe_b64decode(payload + "==")).get("upstream", "")
    return kinds


def test_every_accept_path_has_a_vector() -> None:
    accepted = [_load(p) for p in FILES if _load(p)["expect"] == "accept"]
    edge = [d for d in accepted if "peer_chain_pem" not in d]
    mtls = [d for d in accepted if "peer_chain_pem" in d]
    assert any(_signatures(d["token"]) == ["user+jwt"] for d in edge)
    # every accepted edge call is a whole DPoP call: a bound token and its proof (spec 4.7)
    assert all("method" in d and "dpop" in d for d in edge)
    assert any(_signatures(d["token"]) == ["app+jwt"] and d["user"] is None for d in mtls)
    depths = {len(_signatures(d["token"])) for d in accepted if d["user"] is not None}
    assert {1, 2, 3, 4, 5, 6} <= depths
    with_intermediate = [d for d in mtls
                         if any(len(k.get("x5c", [])) > 1 for k in d["bundle"]["keys"])]
    assert {len(load_pem_chain(d["peer_chain_pem"].encode())) for d in with_intermediate} \
        == {1, 2}
    assert any("crl_pem" not in d for d in accepted)
    assert any("limits" in d for d in accepted)


def test_vectors_stay_valid_for_years() -> None:
    """Roots for decades, the service certificates of accept vectors for years after ``now``:
    a peer whose X.509 library cannot take a verification time can still run them."""
    for path in FILES:
        doc = _load(path)
        now = datetime.fromtimestamp(doc["now"], UTC)
        for entry in doc["bundle"]["keys"]:
            if entry["use"] == "x509-svid":
                anchor = _der(entry["x5c"][0])
                assert anchor.not_valid_after_utc - now > timedelta(days=365 * 40), path.stem
        if doc["expect"] == "accept" and "peer_chain_pem" in doc:
            for cert in load_pem_chain(doc["peer_chain_pem"].encode()):
                assert cert.not_valid_after_utc - now > timedelta(days=365 * 5), path.stem


def _der(b64: str) -> x509.Certificate:
    import base64

    return x509.load_der_x509_certificate(base64.b64decode(b64))


# --- the generator -----------------------------------------------------------------------


@pytest.mark.slow
def test_the_generator_makes_the_committed_set(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_vectors.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    made = sorted(p.name for p in tmp_path.glob("*.json"))
    assert made == [p.name for p in FILES]
    # new keys, same cases: a fresh vector differs in its bytes but not in what it expects
    for name in ("accept-chain-4-signatures", "reject-peer-revoked"):
        fresh, committed = _load(tmp_path / f"{name}.json"), _load(VECTORS / f"{name}.json")
        assert fresh["token"] != committed["token"]
        assert _expected(fresh) == _expected(committed)


def test_long_lived_ca_lifetimes(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", intermediate=True,
                                   root_lifetime=timedelta(days=365 * 50),
                                   intermediate_lifetime=timedelta(days=365 * 60))
    try:
        root_end = ca.root_cert.not_valid_after_utc
        assert root_end - datetime.now(UTC) > timedelta(days=365 * 49)
        # an intermediate never outlives its root
        assert ca.intermediates[0].not_valid_after_utc == root_end
    finally:
        ca.close()
    with pytest.raises(InvalidValidity):
        CertificateAuthority.init(tmp_path / "bad", root_lifetime=timedelta(hours=1))
    default = CertificateAuthority.init(tmp_path / "default", intermediate=True)
    try:
        life = default.intermediates[0].not_valid_after_utc - datetime.now(UTC)
        assert timedelta(days=364) < life < timedelta(days=366)
    finally:
        default.close()
