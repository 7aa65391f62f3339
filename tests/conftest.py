"""Fixtures shared by every test area: a real CA of our own making (ca/).

``ca_factory(trust_domain="mesh.internal", intermediate=False)`` creates a fresh CA in a new
temporary folder and returns the open :class:`ca.authority.CertificateAuthority`;
``mesh_ca`` is ``ca_factory()``. Creating one costs a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

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
