"""Named points in the CA's commit and publication where a test can kill the process.

``MESH_CA_CRASH_AT=<step>`` makes the process SIGKILL itself the first time it reaches that
step: no ``finally`` block, no ``atexit`` handler, no buffered write runs, exactly as after
``kill -9`` or a power cut that kept the page cache. The crash tests run every CA command once
per step and check that the next command leaves everything consistent (docs/ca.md, "Safety
under failure and concurrency"). Unset (always, outside tests) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "MESH_CA_CRASH_AT"

# Every step, in the order a command passes them. A batch passes the svid-* steps once per
# folder; the crash happens at the first.
STEPS: dict[str, str] = {
    "init-temp-dir": "init: the hidden temporary CA folder exists, still empty",
    "init-root-key": "init: the root key is written in the temporary folder",
    "init-populated": "init: every file is in the temporary folder, not yet renamed",
    "init-renamed": "init: the folder has its final name; its parent not yet fsynced",
    "locked": "a command holds the CA lock; nothing checked or written yet",
    "intent-committed": "the SVID folders about to be written are recorded in the registry",
    "svid-staged": "each new SVID set is complete in a hidden folder; registry unchanged",
    "before-commit": "the CA files are staged as temporary files; the transaction is open",
    "after-commit": "the registry holds the change; no file published yet",
    "published:bundle.spiffe.json": "bundle.spiffe.json replaced",
    "published:svid_bundle.pem": "the CA's svid_bundle.pem replaced",
    "svid-migrated": "a folder of plain files now links them to a copy of the same set",
    "svid-switched": "the folder's ..data link points at the new set; links not all made",
    "svid-linked": "every file name of the folder links into ..data",
    "svid-cleaned": "the folder's previous set and stale temporary files are removed",
    "published:crl.pem": "crl.pem replaced: the publication is complete",
}


def reached(step: str) -> None:
    """Kill this process now if the environment names ``step``."""
    if os.environ.get(ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
