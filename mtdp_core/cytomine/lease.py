"""A lease on a Cytomine project: one job of a software pushes its predictions at a time.

Cytomine has no transactions an app can use, and a job user cannot delete another job's
suggested terms: two predict jobs that push at once would both find nothing and both add
their prediction to each annotation. So a job takes a lease before it compares and pushes:
a project property whose key names the software (the core refuses a second property with the
same key on one object: HTTP 409, the one atomic operation at hand), deleted when the push ends.

A holder that died (SIGKILL, a lost machine) cannot delete its lease; a waiting job takes it
over when the holder's job has ended, when the holder's process is gone (same machine), or
when the holder stopped renewing it (a heartbeat rewrites the value every ``heartbeat``
seconds; a value unchanged for ``stale_after`` seconds of the waiter's own clock is stale,
whatever the clocks of the machines say). A stale lease is deleted by its id, so a waiter
never deletes a lease another waiter has just taken.

A server that does not let the job write project properties gets no lease (logged): pushes
then rely on reconciliation alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Self

from mtdp_core.cytomine.client import CytomineSession, with_retries
from mtdp_core.cytomine.errors import CytomineRequestError, PushError

logger = logging.getLogger(__name__)

PROJECT_CLASS = "be.cytomine.project.Project"
RUNNING_STATUSES = (0, 1, 2, 6)  # not launched, in queue, running, waiting
DEFAULT_HEARTBEAT = 10.0
DEFAULT_STALE_AFTER = 60.0
DEFAULT_WAIT = 3600.0


class PushLease:
    """``with PushLease(session, project, "MTDP-SVM-Predict", job=42): ...`` pushes alone.

    Args:
        session: connected as the job user.
        project: the project id; name: what is leased (the software's name).
        job: the holder's job id (lets waiters see that the holder has ended).
        heartbeat, stale_after: seconds (see the module docstring); wait: longest wait for
            another holder before giving up (:class:`PushError`); poll: seconds between checks.
    """

    def __init__(
        self,
        session: CytomineSession,
        project: int,
        name: str,
        *,
        job: int | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        stale_after: float = DEFAULT_STALE_AFTER,
        wait: float = DEFAULT_WAIT,
        poll: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.project = project
        self.key = "mtdp-push-lock:" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        self.job = job
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.wait = wait
        self.poll = poll
        self.sleep = sleep
        self.clock = clock
        self.token = uuid.uuid4().hex
        self.property_id: int | None = None
        self._beat = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.waited = 0.0

    # ------------------------------------------------------------------ paths and values
    @property
    def _base(self) -> str:
        return f"domain/{PROJECT_CLASS}/{self.project}"

    def _value(self) -> str:
        return json.dumps(
            {"job": self.job, "host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "beat": self._beat}
        )

    def _body(self) -> dict[str, Any]:
        return {"domainClassName": PROJECT_CLASS, "domainIdent": self.project, "key": self.key, "value": self._value()}

    def current(self) -> dict | None:
        """The lease property now on the project (None when free)."""
        try:
            return self.session.get_json(f"{self._base}/key/{self.key}/property.json")
        except CytomineRequestError as exc:
            if exc.status == 404:
                return None
            raise

    # ------------------------------------------------------------------ taking and giving back
    def acquire(self) -> bool:
        """Take the lease, waiting for another holder; False when the server allows no lease."""
        start = self.clock()
        seen: tuple[str, float] | None = None
        announced = False
        while True:
            try:
                answer = with_retries(
                    lambda: self.session.post_json(f"{self._base}/property.json", self._body()),
                    retries=self.session.retries,
                    backoff=self.session.backoff,
                    what="taking the push lease",
                    reconcile=self._mine,
                )
                prop = answer.get("property", answer) if isinstance(answer, dict) else None
                self.property_id = int(prop["id"]) if isinstance(prop, dict) and prop.get("id") else None
                if self.property_id is None:  # an answer without the property: look it up
                    found = self._mine()
                    self.property_id = int(found["property"]["id"]) if found else None
                break
            except CytomineRequestError as exc:
                if exc.status in (400, 401, 403):
                    logger.warning("no push lease (the server refused the project property: %s)", exc)
                    return False
                if exc.status != 409:
                    raise PushError(f"Re-run the job: the push lease could not be taken ({exc}).") from None
            holder = self.current()
            if holder is None:
                continue  # released in between
            value = _parse(holder.get("value"))
            if value.get("token") == self.token:
                self.property_id = int(holder["id"])
                break
            now = self.clock()
            if seen is None or seen[0] != holder.get("value"):
                seen = (str(holder.get("value")), now)
            if self._stale(value, now - seen[1]):
                logger.warning("push lease of job %s is stale: taking it over", value.get("job"))
                self._delete(int(holder["id"]))
                continue
            if now - start > self.wait:
                raise PushError(
                    f"Re-run the job when job {value.get('job')} has finished pushing: it has held the push lease "
                    f"of project {self.project} for more than {self.wait:.0f} s."
                )
            if not announced:
                logger.info("waiting for job %s, which is pushing predictions to this project", value.get("job"))
                announced = True
            self.sleep(self.poll)
        self.waited = self.clock() - start
        self._thread = threading.Thread(target=self._renew, name="push-lease", daemon=True)
        self._thread.start()
        logger.info("push lease %s taken (property %s)", self.key, self.property_id)
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.property_id is not None:
            self._delete(self.property_id)
            logger.info("push lease %s released", self.key)
            self.property_id = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ helpers
    def _mine(self) -> dict | None:
        holder = self.current()
        if holder is not None and _parse(holder.get("value")).get("token") == self.token:
            return {"property": holder}
        return None

    def _stale(self, value: dict, unchanged_for: float) -> bool:
        if value.get("host") == socket.gethostname() and value.get("pid"):
            try:
                os.kill(int(value["pid"]), 0)
            except ProcessLookupError:
                return True  # the holder's process is gone
            except (PermissionError, ValueError, OverflowError):
                pass
        job = value.get("job")
        if job:
            try:
                status = self.session.get_json(f"job/{int(job)}.json").get("status")
            except CytomineRequestError as exc:
                if exc.status == 404:
                    return True
            else:
                if status not in RUNNING_STATUSES:
                    return True  # the holder's job has ended
        return unchanged_for > self.stale_after

    def _delete(self, property_id: int) -> None:
        try:
            self.session.request("DELETE", f"{self._base}/property/{property_id}.json")
        except CytomineRequestError as exc:
            if exc.status != 404:  # 404: gone already (released, or taken over)
                logger.warning("could not delete the push lease property %d: %s", property_id, exc)

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self._beat += 1
            try:
                self.session.put_json(f"{self._base}/property/{self.property_id}.json", self._body())
            except CytomineRequestError as exc:
                logger.warning("could not renew the push lease: %s", exc)


def _parse(value: Any) -> dict:
    try:
        parsed = json.loads(value) if isinstance(value, str) else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
