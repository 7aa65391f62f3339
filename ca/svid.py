"""IssuedSVID: one issued X.509-SVID, and how it is written to a service's identity folder.

File names and modes follow spec 2.1 (spiffe-helper compatible).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca import fsio
from ca.errors import InvalidInput, OutputError
from mesh.identity.spiffeid import SpiffeId

SVID_PEM = "svid.pem"
SVID_KEY_PEM = "svid_key.pem"
SVID_BUNDLE_PEM = "svid_bundle.pem"


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

    def stage_to(self, directory: Path, staged: fsio.StagedFiles) -> None:
        """Stage svid.pem, svid_key.pem (0600) and svid_bundle.pem for an atomic replace.

        The certificate goes last: file watchers reload on svid.pem, and by then the key it
        needs is already in place.
        """
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(
                f"cannot create the output folder {directory}: {err.strerror or err}"
            ) from err
        if self.private_key is None:
            self._check_kept_key(directory / SVID_KEY_PEM)
        staged.add(directory / SVID_BUNDLE_PEM, self.bundle_pem(), fsio.PUBLIC_MODE)
        if self.private_key is not None:
            staged.add(directory / SVID_KEY_PEM, self.key_pem(), fsio.KEY_MODE)
        staged.add(directory / SVID_PEM, self.chain_pem(), fsio.PUBLIC_MODE)

    def _check_kept_key(self, key_path: Path) -> None:
        """With a CSR the service keeps its key; a different key already in the folder would
        be paired with the new certificate by whoever loads the folder, so refuse."""
        if not key_path.exists():
            return
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            matches = key.public_key() == self.certificate.public_key()
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
            matches = False
        if not matches:
            raise OutputError(
                f"{key_path} holds a key other than the CSR's; it would not match the new "
                "certificate: move it away or choose another output folder"
            )

    def write_to(self, directory: Path) -> None:
        """Write the three files into ``directory`` (created if missing), each atomically.

        With a CSR-issued SVID no key file is written (any existing one is left alone).
        """
        staged = fsio.StagedFiles()
        try:
            self.stage_to(Path(directory), staged)
        except BaseException:
            staged.discard()
            raise
        staged.commit()
