"""Group commit: every write of the CA service goes through one writer thread, in batches.

Handlers validate and sign outside any lock, then hand the writer an *operation*: a function
that re-checks what may have changed since (eviction, revocation, a token used meanwhile) and
writes its rows. The writer takes every operation waiting (up to ``max_batch``) and runs them in
ONE CA change (:meth:`ca.authority.CertificateAuthority.change`: lock, transaction, one
publication of bundle and CRL), each in a SAVEPOINT so a refused operation leaves no row while
the others commit. A renewal storm therefore costs one commit and one publication per batch
instead of one per certificate.

Answers go out only after the commit and the publication: an agent never holds a certificate
the registry does not know, and never a key the bundle does not carry yet. If the change fails
(disk full, a broken registry) every operation of the batch fails with ``CA_UNAVAILABLE`` and
nothing of it was written.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ca.authority import CertificateAuthority
from ca.errors import CAError
from ca.registry import Registry
from ca.service.crash import crash_point
from ca.service.errors import Refused
from mesh.errors import Reason

_log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAX_BATCH = 256


@dataclass(slots=True)
class _Op(Generic[T]):
    apply: Callable[[Registry], T]
    future: Future[T]
    kind: str  # names the crash points of this operation (ca/service/crash.py)


class _NothingCommitted(Exception):
    """Every operation of a batch was refused: roll back instead of publishing for nothing."""


class BatchWriter:
    """The single writer of a CA service. ``run(apply)`` blocks until ``apply`` is committed."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._ca = ca
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Op[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="ca-service-writer", daemon=True)
        self._closed = False
        self.batches = 0  # committed batches, for the benchmark's report
        self._thread.start()

    def submit(self, apply: Callable[[Registry], T], kind: str = "write") -> Future[T]:
        future: Future[T] = Future()
        if self._closed:
            future.set_exception(_unavailable("the CA service is shutting down"))
        else:
            self._queue.put(_Op(apply, future, kind))
        return future

    def run(self, apply: Callable[[Registry], T], kind: str = "write") -> T:
        """Queue ``apply`` and wait for its outcome. ``kind`` (``attest``, ``renew``, ...)
        names its crash points, ``<kind>.before-commit`` and ``<kind>.after-commit``."""
        return self.submit(apply, kind).result()

    def close(self) -> None:
        """Finish the batches already queued, then stop the thread."""
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch: list[_Op[Any]] = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                batch.append(op)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Op[Any]]) -> None:
        outcomes: list[tuple[bool, Any]] = []

        def apply_all(reg: Registry) -> None:
            outcomes.clear()
            db = reg.connection
            for op in batch:
                db.execute("SAVEPOINT op")
                try:
                    result = op.apply(reg)
                except Refused as refused:
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    outcomes.append((False, refused))
                    continue
                db.execute("RELEASE op")
                outcomes.append((True, result))
            if not any(ok for ok, _ in outcomes):
                raise _NothingCommitted
            for op in batch:
                crash_point(f"{op.kind}.before-commit")

        try:
            self._ca.change(apply_all)
        except _NothingCommitted:
            pass
        except (CAError, OSError) as err:
            _log.error("a batch of %d CA service writes failed: %s", len(batch), err)
            failure = _unavailable(f"the CA could not record the issuance ({err}); try again")
            for op in batch:
                op.future.set_exception(failure)
            return
        except BaseException as err:
            for op in batch:
                op.future.set_exception(_unavailable("the CA service failed while issuing"))
            if not isinstance(err, Exception):
                raise
            _log.exception("a batch of CA service writes failed")
            return
        else:
            self.batches += 1
            for op in batch:
                crash_point(f"{op.kind}.after-commit")
            self._on_commit()
        for op, (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)


def _unavailable(message: str) -> Refused:
    return Refused(Reason.CA_UNAVAILABLE, message)
