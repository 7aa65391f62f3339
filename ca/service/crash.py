"""Deterministic crash points, for the tests that prove crash safety by killing the process.

``MESH_CA_SERVICE_CRASH_AT=<step>`` makes the process exit at once (``os._exit``: no cleanup,
no rollback, no flush, like a kill -9) when it reaches that step. Steps:

- ``attest.checked``: a join token and CSR passed every check; nothing written yet;
- ``<kind>.before-commit``: inside the registry transaction, every row of the writer's batch
  written, when the batch holds an operation of that kind (``attest``, ``renew``, ``issue``,
  ``serving``);
- ``<kind>.after-commit``: committed and published, no answer sent yet;
- ``evict.before-commit``: inside the eviction's transaction, certificates marked revoked.

Unset (always, outside tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os

ENV = "MESH_CA_SERVICE_CRASH_AT"
EXIT_CODE = 86


def crash_point(step: str) -> None:
    if os.environ.get(ENV) == step:
        os._exit(EXIT_CODE)
