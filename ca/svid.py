"""IssuedSVID: one issued X.509-SVID, and how it is written to a service's identity folder.

File names and modes follow spec 2.1 (spiffe-helper compatible); how a folder switches from one
set of files to the next at once: :mod:`ca.svidfolder`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca import fsio, svidfolder
from ca.errors import InvalidInput, OutputError
from ca.svidfolder import SVID_BUNDLE_PEM, SVID_KEY_PEM, SVID_PEM
from mesh.identity.spiffeid import SpiffeId

__all__ = ["SVID_BUNDLE_PEM", "SVID_KEY_PEM", "SVID_PEM", "IssuedSVID"]


@dataclass(frozen=True, slots=True)
class IssuedSVID:
    """One issued X.509-SVID with everything a service needs to use it."""

    name: str
    spiffe_id: SpiffeId
    serial: int
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # leaf first, then intermediates; never the root
    private_key: ec.EllipticCurvePrivateKey | None = field(repr=False)  # None: key from a CSR
    thumbprint: str
    not_before: datetime
    not_after: datetime
    bundle: tuple[x509.Certificate, ...]  # the trust anchors (roots)

    def chain_pem(self) -> bytes:
        return fsio.cert_pem(self.chain)

    def bundle_pem(self) -> bytes:
        return fsio.cert_pem(self.bundle)

    def key_pem(self) -> bytes:
        if self.private_key is None:
            raise InvalidInput(
                f"the CA does not hold the key of {self.name}: it was issued from a CSR"
            )
        return fsio.key_pem(self.private_key)

    def plan_set(self, directory: Path) -> svidfolder.SetPlan:
        """The set of files ``directory`` will switch to (see :mod:`ca.svidfolder`).

        With a CSR the service keeps its key: a plain ``svid_key.pem`` of its own stays as it
        is, and one this CA wrote before is carried into the new set (it must be the CSR's).
        """
        directory = Path(directory).absolute()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(
                f"cannot create the output folder {directory}: {err.strerror or err}"
            ) from err
        if not directory.is_dir():
            raise OutputError(f"cannot use {directory} as an output folder: it is not a folder")
        key_path = directory / svidfolder.SVID_KEY_PEM
        key = self.key_pem() if self.private_key is not None else self._kept_key(key_path)
        files = [(svidfolder.SVID_BUNDLE_PEM, self.bundle_pem())]
        if key is not None:
            files.append((svidfolder.SVID_KEY_PEM, key))
        files.append((svidfolder.SVID_PEM, self.chain_pem()))
        return svidfolder.SetPlan(directory, svidfolder.new_set_name(self.serial), tuple(files))

    def _kept_key(self, key_path: Path) -> bytes | None:
        """With a CSR the service keeps its key; a different key already in the folder would
        be paired with the new certificate by whoever loads the folder, so refuse. Returns the
        key to carry into the new set (None: nothing of ours to carry)."""
        if not os.path.lexists(key_path):
            return None
        ours = svidfolder.our_link(key_path)
        try:
            data = svidfolder.shown(key_path.parent, key_path.name) if ours else None
            pem = data if ours else key_path.read_bytes()
            key = serialization.load_pem_private_key(pem or b"", password=None)
            matches = key.public_key() == self.certificate.public_key()
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
            matches = False
        if not matches:
            raise OutputError(
                f"{key_path} holds a key other than the CSR's; it would not match the new "
                "certificate: move it away or choose another output folder"
            )
        return data

    def write_to(self, directory: Path) -> None:
        """Switch ``directory`` (created if missing) to this SVID's files in one step.

        svid.pem, svid_key.pem (0600) and svid_bundle.pem; with a CSR-issued SVID no key is
        written. Not journalled: a crash in the middle leaves the old set, and the next write
        to the folder removes what it left. The CA's own ``out_dir`` writes are journalled.
        """
        plan = self.plan_set(Path(directory))
        svidfolder.stage(plan)
        if not svidfolder.install(plan.folder, plan.set_dir):
            raise OutputError(f"the new files for {plan.folder} vanished before they were used")
