"""Pushing predictions back to Cytomine: in bulk, with retries, idempotent across runs.

Two modes (the ``push_mode`` parameter of the predict apps):

``term``
    The predicted term is **suggested on the existing annotation** as an algo annotation term
    of the job, with its confidence as ``rate`` and the annotation's own term (when it has one)
    as ``expectedTerm`` (what Cytomine's job statistics compare against). This is how a real
    core lets a job classify people's annotations: a job user can neither delete nor replace a
    person's term (``RestAnnotationTermController``), it adds its suggestion. Cytomine has no
    bulk route for these: they are sent concurrently by a thread pool.
``annotation``
    A **new algo annotation** with the same geometry, on the same image, carrying the
    predicted term and its ``rate``, created in chunks by the bulk route (``POST
    /api/annotation.json`` with a JSON array).

Exactly once. A real Cytomine offers no transaction or idempotency key, so a push is made
safe by comparing with what the server holds, before and after writing:

- **before**: the annotations and suggestions that earlier jobs of the same software (any
  version, found through the project's jobs) and this job made are listed once; a prediction
  already there with the same term is left alone, an existing predicted annotation whose term
  changed gets the new term as a suggestion instead of a twin, only what is missing is sent.
  So a re-run creates nothing twice and completes a push that was interrupted;
- **before re-sending**: a write that failed without a clear answer (timeout, dropped
  connection, a gateway's 502/504, a 500) may have been applied: the server is asked what it
  now holds before the missing part is sent again;
- **after pushing**: everything is listed again (after a pause when some write's fate was in
  doubt: a gateway that gave up may still pass the request on). Duplicates this job created
  are deleted (the oldest prediction of a place is kept, by every job alike), predictions the
  server acknowledged but does not hold are sent again, and the counts reported are what the
  server holds, not what was sent;
- **one job at a time**: a job holds a lease on the project (:class:`~mtdp_core.cytomine.lease.
  PushLease`) while it compares and pushes, so two predict jobs running at once do not both
  add what they both found missing (a job user cannot delete another job's suggested terms,
  so such twins could not be repaired afterwards).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mtdp_core.cytomine.annotations import AnnotationRecord
from mtdp_core.cytomine.client import CytomineSession, backoff_delay, thread_pool
from mtdp_core.cytomine.errors import CytomineRequestError, ParameterError, PushError
from mtdp_core.cytomine.lease import PushLease

logger = logging.getLogger(__name__)

PUSH_MODES = ("term", "annotation")
DEFAULT_CHUNK_SIZE = 100
DEFAULT_THREADS = 8
#: Seconds to wait before the final check when some write's fate was in doubt.
DEFAULT_SETTLE = 5.0
#: Push-and-check rounds before what is still missing is reported.
ROUNDS = 3


@dataclass(frozen=True)
class Prediction:
    """One prediction to push.

    Attributes:
        annotation: the annotation that was classified.
        term: the predicted Cytomine term id (None: the class has no single term, e.g. a binary
            class grouping several terms; such predictions are reported, not pushed).
        rate: confidence in [0, 1].
        expected_term: the annotation's own term when it has exactly one (else None).
    """

    annotation: AnnotationRecord
    term: int | None
    rate: float
    expected_term: int | None = None

    @property
    def target_id(self) -> int:
        """The annotation a term suggestion goes on (the parent of a reviewed annotation)."""
        return self.annotation.parent or self.annotation.id

    @property
    def key(self) -> tuple[int, str]:
        """Where its predicted annotation goes (``annotation`` mode)."""
        return geometry_key(self.annotation.image, self.annotation.location)


@dataclass
class PushReport:
    """What a push did, as the server holds it after the final check.

    ``pushed`` maps each source annotation id to the annotation that carries its prediction
    (itself in ``term`` mode, the predicted one in ``annotation`` mode); ``created`` /
    ``suggested``: predictions this job added (annotations / terms); ``unchanged``: already
    there; ``removed``: duplicates this job made and deleted; ``duplicates_left``: extra
    predictions of earlier jobs this job may not delete; ``failed``: (annotation, reason) refused.
    """

    mode: str
    n_predictions: int = 0
    created: int = 0
    suggested: int = 0
    unchanged: int = 0
    not_pushable: int = 0
    removed: int = 0
    duplicates_left: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    pushed: dict[int, int] = field(default_factory=dict)
    requests: int = 0
    seconds: float = 0.0
    lease_wait: float = 0.0

    @property
    def written(self) -> int:
        """Predictions present on the server for this push (added now or already there)."""
        return self.created + self.suggested + self.unchanged

    def summary(self) -> str:
        what = "annotations created" if self.mode == "annotation" else "terms suggested"
        parts = [f"{self.created if self.mode == 'annotation' else self.suggested} {what}"]
        if self.mode == "annotation" and self.suggested:
            parts.append(f"{self.suggested} terms updated")
        parts.append(f"{self.unchanged} already up to date")
        if self.removed:
            parts.append(f"{self.removed} duplicates removed")
        if self.duplicates_left:
            parts.append(f"{self.duplicates_left} duplicates of earlier jobs left")
        if self.not_pushable:
            parts.append(f"{self.not_pushable} without a term to push")
        if self.failed:
            parts.append(f"{len(self.failed)} refused")
        return ", ".join(parts)


def geometry_key(image: int, location: str) -> tuple[int, str]:
    """Identity of a predicted annotation: its image and normalised geometry."""
    import shapely

    try:
        geometry = shapely.normalize(shapely.from_wkt(location))
        return image, shapely.to_wkt(geometry, rounding_precision=3)
    except Exception:  # noqa: BLE001 - an unparsable WKT is compared as text
        return image, location.strip()


def software_job_users(
    session: CytomineSession, project: int, software_name: str, current_job_user: int | None = None
) -> list[int]:
    """Job users of every job of ``software_name`` (any version) in ``project``, this job's included."""
    jobs = session.get_collection("job.json", {"project": project})
    users = {int(j["userJob"]) for j in jobs if j.get("softwareName") == software_name and j.get("userJob")}
    if current_job_user:
        users.add(int(current_job_user))
    return sorted(users)


@dataclass(frozen=True)
class _Suggestion:
    id: int
    user: int


class PredictionPusher:
    """Pushes :class:`Prediction` s of one job (see the module docstring).

    Args:
        session: connected as the job user.
        project: the project id.
        job_users: users whose predictions count as "already there" (this job's and earlier
            jobs' of the same software: :func:`software_job_users`).
        mode: ``"term"`` or ``"annotation"``.
        software: the software's name: the push takes the project's lease for it and lists its
            jobs' users again once it holds it (None: no lease, ``job_users`` only).
        job: this job's id (recorded in the lease); own_user: this job's user (default: the
            session's user), whose duplicates it deletes.
        chunk_size: annotations per bulk request (default ``DEFAULT_CHUNK_SIZE``); threads: concurrent
            term requests.
        retries, backoff: for requests that failed without an answer or with a 5xx/429.
        settle: seconds to wait before the final check when a write's fate was in doubt (default
            ``DEFAULT_SETTLE``).
        lease_options: keyword arguments of :class:`PushLease` (heartbeat, stale_after, wait...).
    """

    def __init__(
        self,
        session: CytomineSession,
        project: int,
        job_users: Sequence[int] = (),
        *,
        mode: str = "term",
        software: str | None = None,
        job: int | None = None,
        own_user: int | None = None,
        chunk_size: int | None = None,
        threads: int = DEFAULT_THREADS,
        retries: int | None = None,
        backoff: float | None = None,
        settle: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        lease_options: dict[str, Any] | None = None,
    ) -> None:
        if mode not in PUSH_MODES:
            raise ParameterError(f"Use push_mode 'term' or 'annotation': got {mode!r}.")
        chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
        if chunk_size < 1 or threads < 1:
            raise ParameterError(f"Use a chunk size and thread count of at least 1: got {chunk_size}, {threads}.")
        self.session = session
        self.project = project
        self.job_users = sorted(set(job_users))
        self.mode = mode
        self.software = software
        self.job = job
        self._own_user = own_user
        self.chunk_size = chunk_size
        self.threads = threads
        self.retries = session.retries if retries is None else retries
        self.backoff = session.backoff if backoff is None else backoff
        self.settle = DEFAULT_SETTLE if settle is None else settle
        self.sleep = sleep
        self.lease_options = dict(lease_options or {})
        self._requests = 0
        self._in_doubt = False
        self._lock = threading.Lock()

    @property
    def own_user(self) -> int:
        if self._own_user is None:
            self._own_user = int(self.session.current_user()["id"])
        return self._own_user

    def push(self, predictions: Sequence[Prediction], progress: Callable[[int, int], None] | None = None) -> PushReport:
        start, requests_before = time.perf_counter(), self.n_requests
        report = PushReport(self.mode, n_predictions=len(predictions))
        pushable = [p for p in predictions if p.term is not None]
        report.not_pushable = len(predictions) - len(pushable)
        if report.not_pushable:
            logger.warning(
                "%d predictions have no single term to push (a class grouping several terms)", report.not_pushable
            )
        if pushable:
            lease: PushLease | None = None
            try:
                if self.software:
                    lease = PushLease(self.session, self.project, self.software, job=self.job, **self.lease_options)
                    if not lease.acquire():
                        lease = None
                    report.lease_wait = lease.waited if lease else 0.0
                    # Listed once the lease is held: a job that pushed meanwhile is seen.
                    users = software_job_users(self.session, self.project, self.software, self.own_user)
                    self.job_users = sorted(set(self.job_users) | set(users))
                self._in_doubt = False
                if self.mode == "term":
                    self._push_terms(pushable, report, progress)
                else:
                    self._push_annotations(pushable, report, progress)
            except CytomineRequestError as exc:  # a listing that kept failing: the server is gone
                raise PushError(
                    f"Re-run the job to push the remaining predictions (nothing is duplicated): the server stopped "
                    f"answering ({exc})."
                ) from exc
            finally:
                if lease is not None:
                    lease.release()
        report.seconds = time.perf_counter() - start
        report.requests = self.n_requests - requests_before
        logger.info(
            "push (%s mode): %s in %.1f s, %d requests", self.mode, report.summary(), report.seconds, report.requests
        )
        return report

    def _settle(self) -> None:
        if self._in_doubt and self.settle > 0:
            logger.info("some writes failed without a clear answer: waiting %.0f s before the final check", self.settle)
            self.sleep(self.settle)
        self._in_doubt = False

    # ------------------------------------------------------------------ term mode
    def existing_suggestions(self, images: Iterable[int]) -> dict[int, set[int]]:
        """Annotation id -> terms already suggested on it by ``job_users``."""
        return {a: set(terms) for a, terms in self._suggestions(images).items()}

    def _suggestions(self, images: Iterable[int]) -> dict[int, dict[int, list[_Suggestion]]]:
        """Annotation id -> term -> suggestions of it by ``job_users`` (oldest first)."""
        if not self.job_users:
            return {}
        rows = self.session.get_collection(
            "annotation.json",
            {
                "project": self.project,
                "images": sorted(set(images)),
                "showAlgo": True,
                "showBasic": True,
                "usersForTermAlgo": self.job_users,
            },
        )
        self._count()
        found: dict[int, dict[int, list[_Suggestion]]] = {}
        for row in rows:
            if row.get("idTerm") is not None and row.get("userJob") in self.job_users:
                suggestion = _Suggestion(int(row.get("algoAnnotationTerm") or 0), int(row["userJob"]))
                found.setdefault(int(row["id"]), {}).setdefault(int(row["idTerm"]), []).append(suggestion)
        for terms in found.values():
            for suggestions in terms.values():
                suggestions.sort(key=lambda x: x.id)
        return found

    def _push_terms(
        self, predictions: list[Prediction], report: PushReport, progress: Callable[[int, int], None] | None
    ) -> None:
        images = {p.annotation.image for p in predictions}
        before = self._suggestions(images)
        total = len(predictions)
        todo = [p for p in predictions if p.term not in before.get(p.target_id, {})]
        if progress:
            progress(total - len(todo), total)
        refused: dict[int, str] = {}
        for _ in range(ROUNDS):
            if not todo:
                break
            sent, exhausted = self._send_terms(todo, refused, progress, total)
            self._settle()
            if exhausted:
                self._account_terms(predictions, before, report, refused)
                left = total - report.written - len(report.failed)
                if left:  # (a request whose retries all "failed" may have been applied all the same)
                    raise PushError(
                        f"Re-run the job to push the remaining {left} predictions (nothing is duplicated): "
                        f"{report.written} of {total} pushed, then the server kept failing: {exhausted[0][1]}"
                    )
            now = self._suggestions(images)
            todo = [p for p in sent if p.term not in now.get(p.target_id, {})]
            if todo:
                logger.warning("%d suggested terms acknowledged but not on the server: sending them again", len(todo))
        self._account_terms(predictions, before, report, refused)
        missing = total - report.written - len(report.failed)
        if missing:
            raise PushError(
                f"Re-run the job to push the remaining {missing} predictions (nothing is duplicated): the server "
                f"acknowledged them but does not hold them ({report.written} of {total} pushed)."
            )

    def _account_terms(
        self,
        predictions: list[Prediction],
        before: dict[int, dict[int, list[_Suggestion]]],
        report: PushReport,
        refused: dict[int, str],
    ) -> None:
        """Counts from what the server holds now."""
        now = self._suggestions({p.annotation.image for p in predictions})
        report.suggested = report.unchanged = report.duplicates_left = 0
        report.failed = []
        for p in predictions:
            holders = now.get(p.target_id, {}).get(p.term, [])  # type: ignore[arg-type]
            if holders:
                report.pushed[p.annotation.id] = p.target_id
                report.duplicates_left += len(holders) - 1
                if p.term in before.get(p.target_id, {}):
                    report.unchanged += 1
                else:
                    report.suggested += 1
            elif p.annotation.id in refused:
                report.failed.append((p.annotation.id, refused[p.annotation.id]))
        if report.duplicates_left:
            logger.warning(
                "%d suggested terms are on their annotation more than once (earlier jobs; a job cannot delete them)",
                report.duplicates_left,
            )

    def _send_terms(
        self,
        todo: list[Prediction],
        refused: dict[int, str],
        progress: Callable[[int, int], None] | None,
        total: int,
    ) -> tuple[list[Prediction], list[tuple[int, str]]]:
        """Suggest the terms of ``todo`` (a thread pool); returns (accepted, retries exhausted)."""

        def send(p: Prediction) -> tuple[Prediction, str, bool]:
            body: dict[str, Any] = {
                "annotation": p.target_id,
                "annotationIdent": p.target_id,
                "term": p.term,
                "rate": round(float(p.rate), 6),
            }
            if p.expected_term is not None:
                body["expectedTerm"] = p.expected_term
            attempt = 0
            while True:
                try:
                    self._count()
                    self.session.post_json(f"annotation/{p.target_id}/term/{p.term}.json", body)
                    return p, "", False
                except CytomineRequestError as exc:
                    if exc.status == 409:  # already there: an earlier attempt got through
                        return p, "", False
                    attempt += 1
                    if not exc.retryable:
                        return p, str(exc), False
                    self._in_doubt = True
                    if attempt > self.retries:
                        return p, str(exc), True
                    self.sleep(backoff_delay(attempt, self.backoff))

        accepted: list[Prediction] = []
        exhausted: list[tuple[int, str]] = []
        done = total - len(todo)
        with thread_pool(min(self.threads, max(1, len(todo))), "push") as pool:
            for future in [pool.submit(send, p) for p in todo]:
                p, error, gave_up = future.result()
                if not error:
                    accepted.append(p)
                elif gave_up:
                    exhausted.append((p.annotation.id, error))
                else:
                    refused[p.annotation.id] = error
                    logger.warning("term of annotation %d refused: %s", p.target_id, error)
                done += 1
                if progress:
                    progress(done, total)
        return accepted, exhausted

    # ------------------------------------------------------------------ annotation mode
    def existing_annotations(
        self, images: Iterable[int], users: Sequence[int] | None = None
    ) -> dict[tuple[int, str], list[AnnotationRecord]]:
        """(image, geometry) -> algo annotations created there by ``users`` (default: ``job_users``),
        oldest first."""
        users = list(self.job_users if users is None else users)
        if not users:
            return {}
        rows = self.session.get_collection(
            "annotation.json",
            {
                "project": self.project,
                "images": sorted(set(images)),
                "users": users,
                "includeAlgo": True,
                "showWKT": True,
                "showTerm": True,
                "showBasic": True,
                "showMeta": True,
            },
        )
        self._count()
        found: dict[tuple[int, str], list[AnnotationRecord]] = {}
        for row in rows:
            record = AnnotationRecord.from_json(row)
            if record.kind == "algo" and record.user in users:
                found.setdefault(geometry_key(record.image, record.location), []).append(record)
        for records in found.values():
            records.sort(key=lambda r: r.id)
        return found

    def _push_annotations(
        self, predictions: list[Prediction], report: PushReport, progress: Callable[[int, int], None] | None
    ) -> None:
        images = {p.annotation.image for p in predictions}
        total = len(predictions)
        # Twins in the input itself (two sources with the same geometry) share one predicted annotation.
        unique: dict[tuple[int, str], Prediction] = {}
        for p in predictions:
            if p.key in unique:
                logger.warning(
                    "annotations %d and %d have the same geometry: one predicted annotation for both",
                    unique[p.key].annotation.id,
                    p.annotation.id,
                )
            else:
                unique[p.key] = p
        before = self.existing_annotations(images)
        before_terms = {r.id: set(r.terms) for records in before.values() for r in records}
        found = before
        refused: dict[int, str] = {}
        gave_up: str | None = None  # the last failure after which the server kept failing
        for _ in range(ROUNDS):
            to_create, to_suggest = [], []
            for key, p in unique.items():
                if p.annotation.id in refused:
                    continue
                keeper = found.get(key, [None])[0]
                if keeper is None:
                    to_create.append(p)
                elif p.term not in keeper.terms:
                    # Another prediction at this place (e.g. a new model): suggest the new term on it.
                    to_suggest.append(
                        Prediction(replace(p.annotation, parent=keeper.id), p.term, p.rate, p.expected_term)
                    )
            if not to_create and not to_suggest:
                break
            gave_up = None
            done = total - len(to_create) - len(to_suggest)
            if progress:
                progress(done, total)
            for offset in range(0, len(to_create), self.chunk_size):
                chunk = to_create[offset : offset + self.chunk_size]
                gave_up = self._create_chunk(chunk, refused)
                if gave_up:
                    break  # check what the server holds before anything else is sent
                done += len(chunk)
                if progress:
                    progress(done, total)
            if to_suggest and not gave_up:
                _, exhausted = self._send_terms(to_suggest, refused, None, total)
                gave_up = exhausted[0][1] if exhausted else None
            self._settle()
            found = self.existing_annotations(images)
            self._remove_own_duplicates(found, unique, report)
        if progress:
            progress(total, total)
        # Counts from what the server holds now.
        report.created = report.suggested = report.unchanged = report.duplicates_left = 0
        report.failed = []
        missing = 0
        for p in predictions:
            group = found.get(p.key, [])
            keeper = group[0] if group else None
            if keeper is None or p.term not in keeper.terms:
                if unique[p.key].annotation.id in refused:
                    report.failed.append((p.annotation.id, refused[unique[p.key].annotation.id]))
                else:
                    missing += 1
                continue
            report.pushed[p.annotation.id] = keeper.id
            if keeper.id not in before_terms:
                report.created += 1
            elif p.term in before_terms[keeper.id]:
                report.unchanged += 1
            else:
                report.suggested += 1
        report.duplicates_left = sum(len(found.get(key, [])) - 1 for key in unique if found.get(key))
        if report.duplicates_left:
            logger.warning(
                "%d predicted annotations of earlier jobs are duplicates (not this job's: kept)", report.duplicates_left
            )
        if missing:
            why = f"then: {gave_up}" if gave_up else "the server acknowledged them but does not hold them"
            raise PushError(
                f"Re-run the job to push the remaining {missing} predictions (nothing is duplicated): "
                f"{report.written} of {total} pushed, {why}"
            )

    def _remove_own_duplicates(
        self,
        found: dict[tuple[int, str], list[AnnotationRecord]],
        unique: dict[tuple[int, str], Prediction],
        report: PushReport,
    ) -> None:
        """Keep the oldest annotation of each place (every job decides alike) and delete the
        other ones this job created; ``found`` is updated."""
        for key in unique:
            group = found.get(key) or []
            for extra in [r for r in group[1:] if r.user == self.own_user]:
                try:
                    self._count()
                    self.session.request("DELETE", f"annotation/{extra.id}.json")
                except CytomineRequestError as exc:
                    if exc.status != 404:  # 404: deleted already (an earlier attempt went through)
                        logger.warning("could not delete the duplicate annotation %d: %s", extra.id, exc)
                        continue
                group.remove(extra)
                report.removed += 1
        if report.removed:
            logger.warning("%d duplicate predicted annotations removed", report.removed)

    def _create_chunk(self, chunk: list[Prediction], refused: dict[int, str]) -> str | None:
        """Create the annotations of ``chunk`` (one bulk request, retried: after a failure without a
        clear answer, only what the server does not hold is sent again). Items the server refuses
        go to ``refused``; returns the last failure when the server kept failing (None otherwise).

        Raises:
            PushError: the server refused the whole request (4xx): sending it again cannot help.
        """
        pending = list(chunk)
        attempt = 0
        while pending:
            body = [
                {
                    "location": p.annotation.location,
                    "image": p.annotation.image,
                    "project": self.project,
                    "term": [p.term],
                    "rate": round(float(p.rate), 6),
                }
                for p in pending
            ]
            try:
                self._count()
                answer = self.session.post_json("annotation.json", body)
            except CytomineRequestError as exc:
                if not exc.retryable:
                    raise PushError(
                        f"Check the project and the model: the server refused the predictions ({exc})."
                    ) from exc
                self._in_doubt = True
                attempt += 1
                if attempt > self.retries:
                    return str(exc)
                logger.warning(
                    "bulk create of %d annotations failed (%s): checking what the server created, retry %d/%d",
                    len(pending),
                    exc,
                    attempt,
                    self.retries,
                )
                self.sleep(backoff_delay(attempt, self.backoff))
                pending = self._missing(pending)
                continue
            status = answer.get("status", 200) if isinstance(answer, dict) else 200
            if status == 200:
                return None
            # 206/400 in the body: some items were refused (a core answers HTTP 200 whatever happened).
            data = answer.get("data", {}) if isinstance(answer, dict) else {}
            left = self._missing(pending)
            reasons = data.get("errors") or [data.get("message") or answer.get("message") or f"status {status}"]
            for index, p in enumerate(left):
                refused[p.annotation.id] = str(reasons[index] if index < len(reasons) else reasons[-1])
            logger.warning("the server refused %d of %d annotations: %s", len(left), len(pending), reasons[0])
            return None
        return None

    def _missing(self, pending: list[Prediction]) -> list[Prediction]:
        """The predictions of ``pending`` the server does not hold (with their term)."""
        found = self.existing_annotations({p.annotation.image for p in pending})
        return [p for p in pending if not any(p.term in r.terms for r in found.get(p.key, []))]

    def _count(self) -> None:
        with self._lock:  # requests are counted for the report and the benchmark (from several threads)
            self._requests += 1

    @property
    def n_requests(self) -> int:
        return self._requests
