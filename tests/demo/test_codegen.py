"""The committed generated code is exactly what scripts/gen-protos makes from protos/ today:
every proto under protos/ (the demo's, the CA service's, the example's), each beside the package
its path names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "mesh" / "demo" / "v1"
PROTOS = ROOT / "protos" / "mesh" / "demo" / "v1"

# Only the stamps naming the generator's version may differ (a newer grpcio-tools on another
# machine); everything derived from the .proto files must match byte for byte.
_VERSION_STAMPS = [
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
    re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)", re.S),
]


def _normalise(text: str) -> str:
    for pattern in _VERSION_STAMPS:
        text = pattern.sub("<version stamp>", text)
    return text


def _generated_files(folder: Path) -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in sorted(folder.iterdir())
        if re.fullmatch(r".+_pb2(_grpc)?\.pyi?", p.name)
    }


def _proto_folders() -> list[Path]:
    """Every folder of protos/ holding a .proto, relative to protos/ (= its package path)."""
    protos = ROOT / "protos"
    return sorted({p.parent.relative_to(protos) for p in protos.rglob("*.proto")})


def test_committed_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-protos"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    folders = _proto_folders()
    assert {f.as_posix() for f in folders} >= {"mesh/demo/v1", "mesh/ca/v1",
                                              "examples/greeter/v1"}
    for folder in folders:
        fresh = _generated_files(tmp_path / folder)
        committed = _generated_files(ROOT / folder)
        assert sorted(committed) == sorted(fresh), f"run scripts/gen-protos: {folder} differs"
        for name, text in fresh.items():
            assert _normalise(committed[name]) == _normalise(text), (
                f"{folder}/{name} is stale: run scripts/gen-protos and commit the result"
            )


def test_every_proto_has_generated_code() -> None:
    stems = {p.stem for p in PROTOS.glob("*.proto")}
    assert stems == {"auth", "gateway", "orders", "inventory", "payments"}
    for stem in stems:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (GENERATED / f"{stem}{suffix}").is_file()


def test_generated_modules_import_by_package_path() -> None:
    from mesh.demo.v1 import gateway_pb2, gateway_pb2_grpc, orders_pb2

    # gateway.proto imports orders.proto: the shared message type must be the same class.
    assert gateway_pb2.PlaceOrderRequest.DESCRIPTOR.fields_by_name["lines"].message_type is (
        orders_pb2.OrderLine.DESCRIPTOR
    )
    assert hasattr(gateway_pb2_grpc, "GatewayServiceStub")
    assert orders_pb2.DESCRIPTOR.package == "mesh.demo.v1"
