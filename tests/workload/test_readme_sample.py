"""The README's minimal service runs as written.

The code block is executed verbatim, in a folder holding what it names (``svids/inventory``,
``inventory-policy.toml``), inside a private network namespace so that its port 8443 is free
and nothing leaves the machine. A client appended after it calls ``Stock`` as gateway, once
for a user (the handler's ``mesh.require_user()`` returns alice) and once as itself (refused
with USER_REQUIRED by that same call).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

POLICY = """\
[[rule]]
name = "stock for gateway"
methods = ["/mesh.demo.v1.InventoryService/Stock"]
peers = ["gateway"]
allow_app_tokens = true
"""

CLIENT = """
# ---- appended by the test: a client of the sample's server --------------------------------
import json as _json
from mesh.tokens.verify import ChainVerifier as _Verifier
from mesh.transport.context import enter_call as _enter, leave_call as _leave
from mesh.transport.status import error_info as _info
import grpc as _grpc

_gateway = mesh.Workload.from_folder("svids/gateway")
_stub = inventory_pb2_grpc.InventoryServiceStub(_gateway.channel("inventory", "127.0.0.1:8443"))
_out = {}
_token = open("user-token").read()
_handle = _enter(_Verifier("gateway", _gateway.bundle_source).verify(_token, None))
try:
    _out["user"] = _stub.Stock(inventory_pb2.StockRequest(), timeout=10).levels[0].sku
finally:
    _leave(_handle)
try:
    _stub.Stock(inventory_pb2.StockRequest(), timeout=10)
except _grpc.RpcError as _err:
    _out["no_user"] = [_err.code().name, _info(_err).reason]
print("RESULT " + _json.dumps(_out))
server.stop(None)
"""


def _sample() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## A service in five lines"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's minimal service has no python block"
    return match.group(1)


def _folder(mesh: Any, name: str, into: Path) -> None:
    mesh.identity(name)
    shutil.copytree(mesh.folder(name), into / "svids" / name)
    shutil.copy(mesh.ca.bundle_path, into / "svids" / name / "bundle.spiffe.json")
    shutil.copy(mesh.ca.crl_path, into / "svids" / name / "crl.pem")


def test_the_readme_minimal_service_runs_as_written(mesh: Any, tmp_path: Path) -> None:
    sample = _sample()
    meshid_lines = [line for line in sample.splitlines()
                    if re.search(r"\bmesh\.|workload\.|server\.", line)]
    assert len(meshid_lines) <= 7, meshid_lines  # five lines of meshid, plus require_user
    for name in ("inventory", "gateway"):
        _folder(mesh, name, tmp_path)
    (tmp_path / "inventory-policy.toml").write_text(POLICY)
    (tmp_path / "user-token").write_text(mesh.user_token("gateway", sub="alice"))
    (tmp_path / "sample.py").write_text(sample + CLIENT)
    run = subprocess.run(
        ["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {sys.executable} sample.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result == {"user": "alice", "no_user": ["PERMISSION_DENIED", "USER_REQUIRED"]}
