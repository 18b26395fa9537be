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

Idempotence. A prediction is identified by the source annotation (``term``) or by the image
and geometry of the annotation it creates (``annotation``). Before pushing, the annotations
and suggestions that **earlier jobs of the same software** (any version, found through the
project's jobs) and this job created are listed once; a prediction that is already there
with the same term is left alone, an existing predicted annotation whose term changed gets
the new term as a suggestion instead of a twin, and only what is missing is created. So
re-running a predict job creates no duplicates, and a job that failed after some chunks is
completed by the next run. Inside a run, a chunk whose request failed without an answer
(timeout, dropped connection) is reconciled with the server (what did it create?) before it
is sent again, so a retry cannot duplicate either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from mtdp_core.cytomine.annotations import AnnotationRecord
from mtdp_core.cytomine.client import CytomineSession, backoff_delay
from mtdp_core.cytomine.errors import CytomineRequestError, ParameterError, PushError

logger = logging.getLogger(__name__)

PUSH_MODES = ("term", "annotation")
DEFAULT_CHUNK_SIZE = 100
DEFAULT_THREADS = 8


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


@dataclass
class PushReport:
    """What a push did; ``pushed`` maps each pushed source annotation id to the annotation that
    carries its prediction (itself in ``term`` mode, the created/matched one in ``annotation``)."""

    mode: str
    n_predictions: int = 0
    created: int = 0
    suggested: int = 0
    unchanged: int = 0
    not_pushable: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    pushed: dict[int, int] = field(default_factory=dict)
    requests: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        what = "annotations created" if self.mode == "annotation" else "terms suggested"
        parts = [f"{self.created if self.mode == 'annotation' else self.suggested} {what}"]
        if self.mode == "annotation" and self.suggested:
            parts.append(f"{self.suggested} terms updated")
        parts.append(f"{self.unchanged} already up to date")
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


class PredictionPusher:
    """Pushes :class:`Prediction` s of one job (see the module docstring).

    Args:
        session: connected as the job user.
        project: the project id.
        job_users: users whose earlier predictions count as "already there" (this job's and
            earlier jobs' of the same software: :func:`software_job_users`).
        mode: ``"term"`` or ``"annotation"``.
        chunk_size: annotations per bulk request (default ``DEFAULT_CHUNK_SIZE``); threads: concurrent
            term requests.
        retries, backoff: for requests that failed without an answer or with a 5xx/429.
    """

    def __init__(
        self,
        session: CytomineSession,
        project: int,
        job_users: Sequence[int],
        *,
        mode: str = "term",
        chunk_size: int | None = None,
        threads: int = DEFAULT_THREADS,
        retries: int | None = None,
        backoff: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if mode not in PUSH_MODES:
            raise ParameterError(f"Use push_mode 'term' or 'annotation': got {mode!r}.")
        chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
        if chunk_size < 1 or threads < 1:
            raise ParameterError(f"Use a chunk size and thread count of at least 1: got {chunk_size}, {threads}.")
        self.session = session
        self.project = project
        self.job_users = list(job_users)
        self.mode = mode
        self.chunk_size = chunk_size
        self.threads = threads
        self.retries = session.retries if retries is None else retries
        self.backoff = session.backoff if backoff is None else backoff
        self.sleep = sleep
        self._requests = 0
        self._lock = threading.Lock()

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
            if self.mode == "term":
                self._push_terms(pushable, report, progress)
            else:
                self._push_annotations(pushable, report, progress)
        report.seconds = time.perf_counter() - start
        report.requests = self.n_requests - requests_before
        logger.info(
            "push (%s mode): %s in %.1f s, %d requests", self.mode, report.summary(), report.seconds, report.requests
        )
        return report

    # ------------------------------------------------------------------ term mode
    def existing_suggestions(self, images: Iterable[int]) -> dict[int, set[int]]:
        """Annotation id -> terms already suggested on it by ``job_users``."""
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
        found: dict[int, set[int]] = {}
        for row in rows:
            if row.get("idTerm") is not None and row.get("userJob") in self.job_users:
                found.setdefault(int(row["id"]), set()).add(int(row["idTerm"]))
        return found

    def _push_terms(
        self, predictions: list[Prediction], report: PushReport, progress: Callable[[int, int], None] | None
    ) -> None:
        existing = self.existing_suggestions(p.annotation.image for p in predictions)
        todo = []
        for p in predictions:
            if p.term in existing.get(p.target_id, ()):
                report.unchanged += 1
                report.pushed[p.annotation.id] = p.target_id
            else:
                todo.append(p)
        total, done = len(predictions), len(predictions) - len(todo)
        if progress:
            progress(done, total)
        retry_exhausted: list[tuple[int, str]] = []

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
                    if attempt > self.retries:
                        return p, str(exc), True
                    self.sleep(backoff_delay(attempt, self.backoff))

        with ThreadPoolExecutor(max_workers=min(self.threads, max(1, len(todo))), thread_name_prefix="push") as pool:
            for future in as_completed([pool.submit(send, p) for p in todo]):
                p, error, exhausted = future.result()
                if not error:
                    report.suggested += 1
                    report.pushed[p.annotation.id] = p.target_id
                elif exhausted:
                    retry_exhausted.append((p.annotation.id, error))
                else:
                    report.failed.append((p.annotation.id, error))
                    logger.warning("term of annotation %d refused: %s", p.target_id, error)
                done += 1
                if progress:
                    progress(done, total)
        if retry_exhausted:
            report.failed.extend(retry_exhausted)
            raise PushError(
                f"Re-run the job to push the remaining {len(retry_exhausted)} predictions (nothing is duplicated): "
                f"{report.suggested + report.unchanged} of {total} pushed, then the server kept failing: "
                f"{retry_exhausted[0][1]}"
            )

    # ------------------------------------------------------------------ annotation mode
    def existing_annotations(
        self, images: Iterable[int], users: Sequence[int] | None = None
    ) -> dict[tuple[int, str], AnnotationRecord]:
        """(image, geometry) -> algo annotation created by ``users`` (default: ``job_users``)."""
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
        found: dict[tuple[int, str], AnnotationRecord] = {}
        for row in rows:
            record = AnnotationRecord.from_json(row)
            if record.kind == "algo" and record.user in users:
                found.setdefault(geometry_key(record.image, record.location), record)
        return found

    def _push_annotations(
        self, predictions: list[Prediction], report: PushReport, progress: Callable[[int, int], None] | None
    ) -> None:
        images = {p.annotation.image for p in predictions}
        existing = self.existing_annotations(images)
        to_create: list[Prediction] = []
        to_suggest: list[tuple[Prediction, AnnotationRecord]] = []
        for p in predictions:
            match = existing.get(geometry_key(p.annotation.image, p.annotation.location))
            if match is None:
                to_create.append(p)
            elif p.term in match.terms:
                report.unchanged += 1
                report.pushed[p.annotation.id] = match.id
            else:
                to_suggest.append((p, match))
        # Twins in the input itself (two sources with the same geometry) would become one annotation.
        seen: dict[tuple[int, str], Prediction] = {}
        unique = []
        for p in to_create:
            key = geometry_key(p.annotation.image, p.annotation.location)
            if key in seen:
                logger.warning(
                    "annotations %d and %d have the same geometry: one predicted annotation for both",
                    seen[key].annotation.id,
                    p.annotation.id,
                )
                continue
            seen[key] = p
            unique.append(p)
        total = len(predictions)
        done = total - len(unique) - len(to_suggest)
        if progress:
            progress(done, total)
        for offset in range(0, len(unique), self.chunk_size):
            chunk = unique[offset : offset + self.chunk_size]
            self._create_chunk(chunk, report, pushed_before=report.created + report.unchanged, total=total)
            done += len(chunk)
            if progress:
                progress(done, total)
        if to_suggest:
            # An earlier run predicted another term at this place: suggest the new one on it.
            suggestions = [
                Prediction(_with_id(match, p.annotation), p.term, p.rate, p.expected_term) for p, match in to_suggest
            ]
            sub = PushReport("term")
            try:
                self._push_terms(suggestions, sub, None)
            finally:
                report.suggested += sub.suggested + sub.unchanged
                report.failed.extend(sub.failed)
                for p, match in to_suggest:
                    if p.annotation.id in sub.pushed:
                        report.pushed[p.annotation.id] = match.id
            if progress:
                progress(total, total)

    def _create_chunk(self, chunk: list[Prediction], report: PushReport, *, pushed_before: int, total: int) -> None:
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
                attempt += 1
                if not exc.retryable or attempt > self.retries:
                    self._reconcile(pending, report)  # count what got through before giving up
                    raise PushError(
                        f"Re-run the job to push the remaining predictions (nothing is duplicated): "
                        f"{report.created + report.unchanged} of {total} pushed, then: {exc}"
                    ) from exc
                logger.warning(
                    "bulk create of %d annotations failed (%s): checking what the server created, retry %d/%d",
                    len(pending),
                    exc,
                    attempt,
                    self.retries,
                )
                self.sleep(backoff_delay(attempt, self.backoff))
                pending = self._reconcile(pending, report)
                continue
            status = answer.get("status", 200) if isinstance(answer, dict) else 200
            if status == 200:
                for p in self._reconcile(pending, report):
                    report.failed.append((p.annotation.id, "the server answered success but did not create it"))
                return
            # 206/400 in the body: some items were refused (a core answers HTTP 200 whatever happened).
            data = answer.get("data", {}) if isinstance(answer, dict) else {}
            left = self._reconcile(pending, report)
            reasons = data.get("errors") or [data.get("message") or answer.get("message") or f"status {status}"]
            for index, p in enumerate(left):
                reason = str(reasons[index] if index < len(reasons) else reasons[-1])
                report.failed.append((p.annotation.id, reason))
            logger.warning("the server refused %d of %d annotations: %s", len(left), len(pending), reasons[0])
            return

    def _reconcile(self, pending: list[Prediction], report: PushReport) -> list[Prediction]:
        """Record the predictions of ``pending`` the server now has (created by this job or an
        earlier one); return those it does not have."""
        existing = self.existing_annotations({p.annotation.image for p in pending})
        left = []
        for p in pending:
            match = existing.get(geometry_key(p.annotation.image, p.annotation.location))
            if match is not None and p.term in match.terms:
                report.created += 1
                report.pushed[p.annotation.id] = match.id
            else:
                left.append(p)
        return left

    def _count(self) -> None:
        with self._lock:  # requests are counted for the report and the benchmark (from several threads)
            self._requests += 1

    @property
    def n_requests(self) -> int:
        return self._requests


def _with_id(match: AnnotationRecord, source: AnnotationRecord) -> AnnotationRecord:
    """``source`` with its term suggestion redirected to the predicted annotation ``match``
    (``Prediction.target_id`` is the ``parent`` when there is one)."""
    from dataclasses import replace

    return replace(source, parent=match.id)
