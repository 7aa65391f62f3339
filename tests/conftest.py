"""Fixtures shared by every test area: a real CA of our own making, and the one mini mesh.

- ``ca_factory(trust_domain="mesh.internal", intermediate=False)`` creates a fresh CA in a new
  temporary folder (a few milliseconds); ``mesh_ca`` is ``ca_factory()``.
- ``mesh`` is a :class:`support.minimesh.MiniMesh` on a fresh CA; ``mesh_factory(
  intermediate=False, **issue_kw)`` builds more; ``shared_mesh`` is one per module, for
  read-only parametrised cases (CA creation dominates their cost).
- ``drop`` is the claim override that removes a claim (:data:`support.minimesh.DROP`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.minimesh import DROP, MiniMesh

from ca.authority import CertificateAuthority

CAFactory = Callable[..., CertificateAuthority]


@pytest.fixture
def ca_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CAFactory]:
    made: list[CertificateAuthority] = []

    def make(
        trust_domain: str = "mesh.internal", intermediate: bool = False
    ) -> CertificateAuthority:
        folder = tmp_path_factory.mktemp("ca") / "ca"
        ca = CertificateAuthority.init(folder, trust_domain=trust_domain, intermediate=intermediate)
        made.append(ca)
        return ca

    yield make
    for ca in made:
        ca.close()


@pytest.fixture
def mesh_ca(ca_factory: CAFactory) -> CertificateAuthority:
    return ca_factory()


@pytest.fixture
def mesh_factory(ca_factory: CAFactory, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Callable[..., MiniMesh]]:
    made: list[MiniMesh] = []

    def make(intermediate: bool = False, trust_domain: str = "mesh.internal",
             **issue_kw: Any) -> MiniMesh:
        mesh = MiniMesh(ca_factory(trust_domain=trust_domain, intermediate=intermediate),
                        tmp_path_factory.mktemp("mesh"), issue_kw=issue_kw)
        made.append(mesh)
        return mesh

    yield make
    for mesh in made:
        mesh.close()


@pytest.fixture
def mesh(mesh_ca: CertificateAuthority, tmp_path: Path) -> Iterator[MiniMesh]:
    m = MiniMesh(mesh_ca, tmp_path)
    yield m
    m.close()


@pytest.fixture(scope="module")
def shared_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniMesh]:
    ca = CertificateAuthority.init(tmp_path_factory.mktemp("shared") / "ca")
    m = MiniMesh(ca, tmp_path_factory.mktemp("shared-mesh"))
    yield m
    m.close()
    ca.close()


@pytest.fixture
def drop() -> object:
    """Pass as a claim override to remove that claim."""
    return DROP
