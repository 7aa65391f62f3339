"""The agent's state folder (``--state DIR``): what lets a restart go on without a new token.

```
DIR/                      0700, the agent's user only
  node.json               {"node", "trust_domain", "ca_fingerprint"}: whose state this is
  agent/                  the agent's own SVID and the trust state, as one folder set
                          (svid.pem, svid_key.pem 0600, svid_bundle.pem, bundle.spiffe.json,
                          crl.pem; switched as one by mesh.agent.folder)
  svids/<service>/        each service SVID held: svid.pem, svid_key.pem 0600, svid_bundle.pem
                          (the same switched set; its bundle.spiffe.json and crl.pem are empty:
                          the trust state is kept once, in agent/, and is not rewritten into
                          every service's folder at each bundle change)
  registrations.json      the last registration list the CA gave (served at once on restart)
  status.json             what `mesh agent status --state DIR` shows
```

Single files are replaced atomically (write to a temporary name, fsync, rename, fsync the
folder). The SVID folders switch their five files as one (:mod:`mesh.agent.folder`).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.agent.errors import AgentConfigError, AgentError
from mesh.agent.folder import CRL_FILE, SPIFFE_BUNDLE_FILE, FolderContent, SvidFolderWriter
from mesh.agent.model import HeldSvid, TrustState, hold, trust_from
from mesh.agent.store import Registration
from mesh.fsio import write_atomic
from mesh.identity.svid import BUNDLE_FILE, KEY_FILE, SVID_FILE

NODE_FILE = "node.json"
REGISTRATIONS_FILE = "registrations.json"
STATUS_FILE = "status.json"


def folder_content(svid: HeldSvid, trust: TrustState) -> FolderContent:
    return FolderContent(
        chain_pem=svid.chain_pem,
        key_pem=svid.key_pem,
        roots_pem=trust.roots_pem,
        bundle_json=trust.bundle_json,
        crl_pem=trust.crl_pem,
    )


class StateDir:
    """Reads and writes one agent's state folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writers: dict[Path, SvidFolderWriter] = {}

    def _writer(self, folder: Path) -> SvidFolderWriter:
        writer = self._writers.get(folder)
        if writer is None:
            writer = self._writers[folder] = SvidFolderWriter(folder)
        return writer

    def prepare(self) -> None:
        """Create the folder 0700, or check an existing one is ours and closed to others."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.stat(self.path)
        except OSError as err:
            raise AgentConfigError(
                f"cannot create the state folder {self.path}: {err.strerror}"
            ) from err
        if not stat.S_ISDIR(st.st_mode):
            raise AgentConfigError(f"the state path {self.path} is not a folder")
        if st.st_uid != os.geteuid():
            raise AgentConfigError(
                f"the state folder {self.path} belongs to uid {st.st_uid}, not to this agent's "
                f"uid {os.geteuid()}: it holds private keys, use a folder of your own"
            )
        if st.st_mode & 0o077:
            os.chmod(self.path, 0o700)
        (self.path / "svids").mkdir(mode=0o700, exist_ok=True)

    # --- node.json ------------------------------------------------------------------------

    def node_info(self) -> dict[str, Any] | None:
        try:
            doc = json.loads((self.path / NODE_FILE).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise AgentConfigError(f"{self.path / NODE_FILE} is unreadable: {err}") from err
        if not isinstance(doc, dict):
            raise AgentConfigError(f"{self.path / NODE_FILE} is not a JSON object")
        return doc

    def save_node_info(self, node: str, trust_domain: str, fingerprint: str) -> None:
        doc = {"node": node, "trust_domain": trust_domain, "ca_fingerprint": fingerprint}
        write_atomic(self.path / NODE_FILE, json.dumps(doc, indent=2).encode() + b"\n", 0o600)

    # --- the agent's own SVID and trust -----------------------------------------------------

    @property
    def agent_folder(self) -> Path:
        return self.path / "agent"

    def save_agent(self, svid: HeldSvid, trust: TrustState) -> None:
        self._writer(self.agent_folder).write(folder_content(svid, trust))

    def load_agent(self, expected_id: str) -> tuple[HeldSvid, TrustState] | None:
        """The stored agent SVID and trust, or None if there is none or it is not valid now."""
        return self._load_folder(self.agent_folder, "agent", expected_id, None)

    # --- service SVIDs --------------------------------------------------------------------

    def service_folder(self, service: str) -> Path:
        return self.path / "svids" / service

    def save_service(self, svid: HeldSvid, trust: TrustState) -> None:
        content = folder_content(svid, trust)
        self._writer(self.service_folder(svid.name)).write(
            FolderContent(content.chain_pem, content.key_pem, content.roots_pem, b"", b""))

    def load_service(
        self, service: str, expected_id: str, trust: TrustState
    ) -> HeldSvid | None:
        got = self._load_folder(self.service_folder(service), service, expected_id, trust)
        return None if got is None else got[0]

    @staticmethod
    def _load_folder(
        folder: Path, name: str, expected_id: str, trust: TrustState | None
    ) -> tuple[HeldSvid, TrustState] | None:
        try:
            chain_pem = (folder / SVID_FILE).read_bytes()
            key_pem = (folder / KEY_FILE).read_bytes()
            if trust is None:
                trust = trust_from(
                    (folder / BUNDLE_FILE).read_bytes(),
                    (folder / SPIFFE_BUNDLE_FILE).read_bytes(),
                    (folder / CRL_FILE).read_bytes(),
                    _sequence_of((folder / SPIFFE_BUNDLE_FILE).read_bytes()),
                )
        except FileNotFoundError:
            return None
        except OSError as err:
            raise AgentConfigError(f"cannot read {folder}: {err.strerror}") from err
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as err:
            raise AgentConfigError(f"{folder / KEY_FILE} is not a readable key") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AgentConfigError(f"{folder / KEY_FILE} is not an EC key")
        try:
            # when it was received is not stored: count its life from not_before (an earlier
            # renewal, never a later one)
            return hold(name, chain_pem, key, expected_id, trust.roots, received_at=0.0), trust
        except AgentError:
            return None  # expired, or not ours any more: get a new one

    # --- registrations and status -----------------------------------------------------------

    def save_registrations(self, regs: dict[str, Registration]) -> None:
        doc = [
            {"service": r.service, "spiffe_id": r.spiffe_id, "uid": r.uid,
             "ttl_seconds": r.ttl_seconds}
            for r in sorted(regs.values(), key=lambda r: r.service)
        ]
        write_atomic(self.path / REGISTRATIONS_FILE, json.dumps(doc, indent=2).encode(), 0o600)

    def load_registrations(self) -> dict[str, Registration]:
        try:
            doc = json.loads((self.path / REGISTRATIONS_FILE).read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise AgentConfigError(
                f"{self.path / REGISTRATIONS_FILE} is unreadable: {err}"
            ) from err
        out: dict[str, Registration] = {}
        for e in doc if isinstance(doc, list) else []:
            try:
                reg = Registration(
                    str(e["service"]), str(e["spiffe_id"]), int(e["uid"]), int(e["ttl_seconds"])
                )
            except (KeyError, TypeError, ValueError):
                continue
            out[reg.service] = reg
        return out

    def save_status(self, status: dict[str, Any]) -> None:
        write_atomic(
            self.path / STATUS_FILE, json.dumps(status, indent=2, sort_keys=True).encode(), 0o644
        )


def _sequence_of(bundle_json: bytes) -> int:
    try:
        seq = json.loads(bundle_json).get("spiffe_sequence", 0)
    except (ValueError, AttributeError):
        return 0
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else 0


def read_status(state: Path) -> dict[str, Any]:
    path = state / STATUS_FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError as err:
        raise AgentConfigError(
            f"{path} does not exist: no agent has run with --state {state}"
        ) from err
    except (OSError, ValueError) as err:
        raise AgentConfigError(f"{path} is unreadable: {err}") from err
    if not isinstance(doc, dict):
        raise AgentConfigError(f"{path} is not a JSON object")
    return doc
