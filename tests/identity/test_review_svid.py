"""Review: how a service loads its identity folder (spec 2: svid_key.pem is 0600)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mesh.identity.svid import SvidError, X509SvidFolder


def test_service_refuses_a_key_file_open_to_other_users(mesh_ca: Any, tmp_path: Path) -> None:
    """The CA refuses its own key when group/other can read it ("like ssh does",
    ca/fsio.load_key), but X509SvidFolder loads a service's svid_key.pem whatever its mode.
    A key another local user can read lets them be the service (mTLS and token signing);
    the service should refuse to start (or at least reload) on such a file."""
    folder = tmp_path / "orders"
    mesh_ca.issue("orders").write_to(folder)
    assert X509SvidFolder(folder).current().spiffe_id == mesh_ca.trust_domain.service("orders")
    os.chmod(folder / "svid_key.pem", 0o644)
    with pytest.raises(SvidError):
        X509SvidFolder(folder).current()
