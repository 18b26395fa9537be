"""Running an app as a Cytomine job, or locally (BIAFLOWS ``--local``), through one interface.

Every app's ``main(argv)`` is ``run_app(parser, argv, pipeline)``:

1. the app's own parser types and checks the parameters (``parse_known_args``: Cytomine
   leaves placeholders of empty values in the command, containers prefix it with theirs);
2. the job is opened (:class:`JobOpening`: the requests of the client's ``CytomineJob.start``,
   retried and reconciled; a person's keys create a job and switch to its job user, a job
   user's keys, as the server launches apps, use that job), or a :class:`LocalJob` with
   ``--local`` (no server: progress is logged, outputs go to ``--outfolder``);
3. ``pipeline(job, args)`` runs, reporting progress and status comments at each stage
   (throttled: one update per stage and a few per second at most in loops), attaching files
   and setting job properties;
4. the job ends SUCCESS at 100%, FAILED with a message of at most 255 characters that leads
   with the fix (an invalid parameter, even one the client's own parser would have crashed
   on; an :class:`~mtdp_core.errors.MtdpError`, its message; anything else, its type and
   message, "see the job log"), or KILLED with how to resume when the process is stopped
   (SIGTERM: how Cytomine stops a job; Ctrl-C).

The client's ``CytomineJob.from_cli`` is not used to parse: it exits the process on a bad
value (argparse) before the job exists, so the job would not say what was wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mtdp_core.cytomine.biaflows import BiaflowsFlags
from mtdp_core.cytomine.client import CytomineSession, with_retries
from mtdp_core.cytomine.errors import (
    CytomineConnectionError,
    CytomineRequestError,
    OutputFolderError,
    ParameterError,
    fit_comment,
)
from mtdp_core.cytomine.params import AppArgumentParser, descriptor_values, options
from mtdp_core.errors import MtdpError
from mtdp_core.logs import configure_logging

logger = logging.getLogger(__name__)

NOT_LAUNCH, RUNNING, SUCCESS, FAILED, KILLED = 0, 2, 3, 4, 8
JOB_CLASS = "be.cytomine.processing.Job"


class Stage:
    """A part of a job's progress bar: ``stage.update(done, total)`` maps to ``[start, end]`` %
    and sends at most one update per ``min_interval`` seconds (plus the last one)."""

    def __init__(self, job: Job, name: str, start: int, end: int, min_interval: float = 2.0) -> None:
        self.job, self.name, self.start, self.end = job, name, start, end
        self.min_interval = min_interval
        # None, not 0.0: time.monotonic() counts from boot, so 0.0 looks "recent" on a machine up
        # less than min_interval seconds and the first update would be dropped.
        self._last: float | None = None

    def update(self, done: int, total: int, detail: str = "") -> None:
        now = time.monotonic()
        fraction = done / total if total else 1.0
        progress = int(self.start + (self.end - self.start) * fraction)
        comment = f"{self.name} ({done}/{total}){'. ' + detail if detail else ''}"
        if done < total and self._last is not None and now - self._last < self.min_interval:
            self.job.latest = (max(progress, self.job.latest[0]), fit_comment(comment))  # for a stop message
            return
        self._last = now
        self.job.progress(progress, comment)


class Job(ABC):
    """What a pipeline sees of its job: progress, outputs, properties.

    Attributes:
        id: the job id (``"local"`` without a server).
        local: True without a server.
        flags: the BIAFLOWS flags.
        outfolder: where output files are written (always; attached too when connected).
        workdir: scratch space (removed at the end unless it is the outfolder).
        session: the connection (None when local).
    """

    id: int | str
    local: bool
    session: CytomineSession | None

    def __init__(self, flags: BiaflowsFlags, app: str) -> None:
        self.flags = flags
        self.app = app
        self.outfolder = Path(flags.outfolder) if flags.outfolder else None  # set by open()
        self.workdir: Path | None = None
        self.properties: dict[str, str] = {}
        self.attachments: list[Path] = []
        self._progress = 0
        #: The latest progress and comment, sent or not (throttled): where a stopped job was.
        self.latest: tuple[int, str] = (0, "")

    def _prepare_folders(self) -> None:
        if self.outfolder is None:
            self.outfolder = default_outfolder(self.app, self.id)
        try:
            self.outfolder.mkdir(parents=True, exist_ok=True)
            _check_writable(self.outfolder)
        except OSError as exc:
            raise OutputFolderError(
                f"Make the output folder writable for uid {_uid()}, or give another --outfolder: cannot write to "
                f"{str(self.outfolder)!r} ({exc.strerror or exc}). In a container, run as its owner: "
                'docker run --user "$(id -u):$(id -g)" ...'
            ) from exc
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mtdp-{self.app}-"))

    def stage(self, name: str, start: int, end: int) -> Stage:
        """Start a stage: progress ``start``% with ``name`` as status comment."""
        self.progress(start, name)
        return Stage(self, name, start, end)

    def progress(self, percent: int, comment: str) -> None:
        percent = max(self._progress, min(99, int(percent)))  # 100 is the end, set by succeed()
        self._progress = percent
        self.latest = (percent, fit_comment(comment))
        self._send_progress(percent, self.latest[1])

    def output_path(self, filename: str) -> Path:
        assert self.outfolder is not None
        return self.outfolder / filename

    def attach(self, path: str | os.PathLike, filename: str | None = None) -> None:
        """Attach a file to the job (and keep it in the outfolder)."""
        path = Path(path)
        assert self.outfolder is not None
        target = self.outfolder / (filename or path.name)
        if path.resolve() != target.resolve():
            shutil.copyfile(path, target)
        self.attachments.append(target)
        self._attach(target, filename or path.name)

    def set_property(self, key: str, value: Any) -> None:
        """A job property (text as is, anything else as JSON); setting it again replaces it."""
        text = value if isinstance(value, str) else json.dumps(value)
        self.properties[key] = text
        self._set_property(key, text)

    def set_properties(self, values: Mapping[str, Any]) -> None:
        """Several job properties, in order; None values are left out."""
        for key, value in values.items():
            if value is not None:
                self.set_property(key, value)

    @abstractmethod
    def _send_progress(self, percent: int, comment: str) -> None: ...

    @abstractmethod
    def _attach(self, path: Path, filename: str) -> None: ...

    @abstractmethod
    def _set_property(self, key: str, value: str) -> None: ...

    @abstractmethod
    def succeed(self, comment: str) -> None: ...

    @abstractmethod
    def fail(self, comment: str) -> None: ...

    @abstractmethod
    def stop(self, comment: str) -> None:
        """End the job KILLED: it was asked to stop (SIGTERM, Ctrl-C)."""

    def cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _check_writable(folder: Path) -> None:
    """Raise OSError unless a file can be created in ``folder`` (mkdir succeeds on an existing
    folder that this user cannot write to)."""
    probe = folder / f".write-test-{os.getpid()}"
    probe.touch()
    probe.unlink()


def _uid() -> str:
    return str(os.getuid()) if hasattr(os, "getuid") else "of this user"


def default_outfolder(app: str, job_id: int | str) -> Path:
    """``./mtdp-out/<app>-<job id>`` (the job's folder when a processing server runs it), or a
    temporary folder when the working directory is read-only (some containers)."""
    base = Path.cwd() / "mtdp-out"
    try:
        base.mkdir(parents=True, exist_ok=True)
        _check_writable(base)
    except OSError:
        base = Path(tempfile.gettempdir()) / "mtdp-out"
    return base / f"{app}-{job_id}"


class LocalJob(Job):
    """A job without a server (BIAFLOWS ``--local``): progress is logged, files stay in the
    outfolder, properties go to ``properties.json`` there."""

    local = True
    session = None

    def __init__(self, flags: BiaflowsFlags, app: str) -> None:
        super().__init__(flags, app)
        self.id = "local"
        self._prepare_folders()
        self.final_status: int | None = None
        self.final_comment = ""

    def _send_progress(self, percent: int, comment: str) -> None:
        logger.info("progress %3d%%: %s", percent, comment)

    def _attach(self, path: Path, filename: str) -> None:
        logger.info("output: %s", path)

    def _set_property(self, key: str, value: str) -> None:
        assert self.outfolder is not None
        (self.outfolder / "properties.json").write_text(json.dumps(self.properties, indent=2) + "\n")

    def succeed(self, comment: str) -> None:
        self.final_status, self.final_comment = SUCCESS, fit_comment(comment)
        logger.info("done: %s (outputs in %s)", self.final_comment, self.outfolder)

    def fail(self, comment: str) -> None:
        self.final_status, self.final_comment = FAILED, fit_comment(comment)
        logger.error("FAILED: %s", self.final_comment)

    def stop(self, comment: str) -> None:
        self.final_status, self.final_comment = KILLED, fit_comment(comment)
        logger.error("KILLED: %s", self.final_comment)


class CytomineJobRun(Job):
    """A Cytomine job, opened by :func:`open_cytomine_job`; every write is safe to retry."""

    local = False

    def __init__(
        self, session: CytomineSession, job: dict, project: dict, software: dict, flags: BiaflowsFlags, app: str
    ) -> None:
        super().__init__(flags, app)
        self.session = session
        self.job_json = dict(job)
        self.project = project
        self.software = software
        self.id = int(job["id"])
        try:
            self._prepare_folders()
        except OutputFolderError as exc:  # the job exists on the server: end it with the reason
            self.fail(str(exc))
            raise

    @property
    def project_id(self) -> int:
        return int(self.project["id"])

    @property
    def software_name(self) -> str:
        return str(self.software.get("name"))

    @property
    def job_user_id(self) -> int | None:
        user = self.job_json.get("userJob")
        return int(user) if user else None

    def _update(self, **changes: Any) -> None:
        # The whole job is PUT (as the client does): idempotent, so retried.
        self.job_json.update(changes)
        try:
            self.session.put_json(f"job/{self.id}.json", self.job_json)
        except CytomineRequestError as exc:
            # A final status whose answer was lost (a late 504) was applied: the retry then finds
            # the job ended and its keys refused. Read the job to tell that from a real refusal.
            if exc.status not in (401, 403) or changes.get("status") not in (SUCCESS, FAILED, KILLED):
                raise
            try:
                current = self.session.get_json(f"job/{self.id}.json")
            except MtdpError:
                raise exc from None
            if not (isinstance(current, dict) and current.get("status") == changes["status"]):
                raise
            logger.info("job %d: the final status was applied by an earlier attempt", self.id)

    def _send_progress(self, percent: int, comment: str) -> None:
        logger.info("progress %3d%%: %s", percent, comment)
        try:
            self._update(progress=percent, statusComment=comment, status=RUNNING)
        except MtdpError as exc:  # progress is informative: never fail a job for it
            logger.warning("could not update the job's progress: %s", exc)

    def _attach(self, path: Path, filename: str) -> None:
        listing = f"domain/{JOB_CLASS}/{self.id}/attachedfile.json"
        before = {f["id"] for f in self.session.get_collection(listing) if f.get("filename") == filename}

        def uploaded() -> dict | None:
            # An upload that failed without a clear answer may have been saved: then it is not sent again.
            new = [f for f in self.session.get_collection(listing) if f.get("filename") == filename]
            return next((f for f in new if f["id"] not in before), None)

        self.session.upload(
            "attachedfile.json",
            path,
            {"domainClassName": JOB_CLASS, "domainIdent": self.id, "filename": filename},
            filename=filename,
            reconcile=uploaded,
        )
        logger.info("attached %s to job %d", filename, self.id)

    def _set_property(self, key: str, value: str) -> None:
        path = f"domain/{JOB_CLASS}/{self.id}/property.json"
        body = {"domainClassName": JOB_CLASS, "domainIdent": self.id, "key": key, "value": value}
        try:
            self.session.post_json(path, body, retry=True)
        except MtdpError as exc:
            if getattr(exc, "status", None) != 409:  # 409: already there (set before, or a retry that got through)
                raise
            existing = [p for p in self.session.get_collection(path) if p.get("key") == key]
            if existing:
                self.session.put_json(
                    f"domain/{JOB_CLASS}/{self.id}/property/{existing[0]['id']}.json", {**body, "id": existing[0]["id"]}
                )

    def succeed(self, comment: str) -> None:
        self._update(status=SUCCESS, progress=100, statusComment=fit_comment(comment))
        logger.info("job %d: SUCCESS: %s", self.id, comment)

    def fail(self, comment: str) -> None:
        comment = fit_comment(comment)
        try:
            self._update(status=FAILED, statusComment=comment)
        finally:
            logger.error("job %d FAILED: %s", self.id, comment)

    def stop(self, comment: str) -> None:
        comment = fit_comment(comment)
        try:
            self._update(status=KILLED, statusComment=comment)
        finally:
            logger.error("job %d KILLED: %s", self.id, comment)


# --------------------------------------------------------------------------- opening and running

Pipeline = Callable[[Job, argparse.Namespace], str]


def _connection(args: argparse.Namespace) -> tuple[str, str, str, int, int]:
    missing = [
        name
        for name in (
            "cytomine_host",
            "cytomine_public_key",
            "cytomine_private_key",
            "cytomine_id_project",
            "cytomine_id_software",
        )
        if getattr(args, name, None) in (None, "")
    ]
    if missing:
        raise ParameterError(
            f"Give {', '.join('--' + m for m in missing)} (set by Cytomine when it launches the app), or run "
            "with --local --infolder FOLDER to work on local images without a server."
        )
    return (
        args.cytomine_host,
        args.cytomine_public_key,
        args.cytomine_private_key,
        int(args.cytomine_id_project),
        int(args.cytomine_id_software),
    )


def open_cytomine_job(
    args: argparse.Namespace, parser: AppArgumentParser, flags: BiaflowsFlags, app: str
) -> CytomineJobRun:
    """Connect, then start the job (a person's keys create one; a job user's keys use theirs)."""
    host, public_key, private_key, project, software = _connection(args)
    session = CytomineSession.connect(host, public_key, private_key)
    job, project_json, software_json = JobOpening(session, project, software, descriptor_values(args, parser)).open()
    run = CytomineJobRun(session, job, project_json, software_json, flags, app)
    logger.info(
        "job %d of %s (software %d) on project %d, outputs in %s",
        run.id,
        run.software_name,
        software,
        project,
        run.outfolder,
    )
    return run


class JobOpening:
    """The start of a job, as the client's ``CytomineJob.start`` does it, but with every request
    retried and every failure typed (the client turns a 500 into ``False``, which reads as
    "wrong keys" or "no such project").

    A person's keys create the job (``POST /api/job.json``), switch to its job user's keys, set
    it RUNNING and record its parameters; a job user's keys (Cytomine launched the app) use its
    job. Creating a job is not idempotent: after a failure without a clear answer, the jobs of
    the project are listed and one this user just created is adopted instead of creating
    another (an extra one a retry created anyway is ended FAILED, never left NOT_LAUNCH). Once a
    job exists, a failure to finish opening it ends it FAILED with the reason.
    """

    def __init__(
        self, session: CytomineSession, project: int, software: int, parameters: argparse.Namespace | None = None
    ) -> None:
        self.session = session
        self.project = project
        self.software = software
        self.parameters = parameters
        self._before: set[int] = set()
        self._in_doubt = False

    def open(self) -> tuple[dict, dict, dict]:
        """(job, project, software) JSON, the job RUNNING."""
        user = self.session.current_user()
        job_id: int | None = int(user["job"]) if user.get("algo") and user.get("job") else None
        try:
            project = self._fetch(
                f"project/{self.project}.json",
                f"Check cytomine_id_project: project {self.project} does not exist or is not readable with these keys",
            )
            software = self._fetch(
                f"software/{self.software}.json",
                f"Check cytomine_id_software: software {self.software} is not registered",
            )
            if job_id is not None:
                job = self.session.get_json(f"job/{job_id}.json")
                created = False
            else:
                job = self._create(user)
                job_id = int(job["id"])
                created = True
                job_user = self.session.get_json(f"user/{int(job['userJob'])}.json")
                person = self.session.keys
                self.session.use_keys(job_user["publicKey"], job_user["privateKey"])
            job = {**job, "status": RUNNING}
            self.session.put_json(f"job/{job_id}.json", job)
            if created:
                self._record_parameters(job, software)
                if self._in_doubt:  # as the person who launched them (a job user may change its own job only)
                    job_keys = self.session.keys
                    self.session.use_keys(*person)
                    try:
                        self._end_twins(user, job_id)
                    finally:
                        self.session.use_keys(*job_keys)
            return job, project, software
        except BaseException as exc:
            if job_id is not None:
                stopped = isinstance(exc, (KeyboardInterrupt, JobStopped))
                reason = f"stopped by {exc}" if stopped else str(exc)
                _end_job(
                    self.session,
                    job_id,
                    KILLED if stopped else FAILED,
                    f"Re-run the job: it could not start ({reason})",
                )
            raise

    def _fetch(self, path: str, missing: str) -> dict:
        try:
            return self.session.get_json(path)
        except CytomineRequestError as exc:
            if exc.status in (403, 404):
                raise CytomineConnectionError(f"{missing} (HTTP {exc.status}).") from None
            raise CytomineConnectionError(f"Re-run when the server works again: {exc}.") from None

    def _jobs(self) -> list[dict]:
        rows = self.session.get_collection("job.json", {"project": self.project, "software": self.software})
        return [j for j in rows if int(j.get("software") or 0) == self.software]

    def _created_by(self, user: dict) -> list[dict]:
        """Jobs of this software that ``user`` created since :meth:`_create` began and that were
        not started (NOT_LAUNCH), oldest first."""
        return sorted(
            (
                j
                for j in self._jobs()
                if int(j["id"]) not in self._before
                and j.get("username") == user.get("username")
                and not j.get("status")
            ),
            key=lambda j: int(j["id"]),
        )

    def _create(self, user: dict) -> dict:
        self._before = {int(j["id"]) for j in self._jobs()}

        def reconcile() -> dict | None:
            # The POST failed without a clear answer: a job it created is adopted, not created again.
            self._in_doubt = True
            mine = self._created_by(user)
            return {"job": mine[0]} if mine else None

        try:
            answer = with_retries(
                lambda: self.session.post_json("job.json", {"project": self.project, "software": self.software}),
                retries=self.session.retries,
                backoff=self.session.backoff,
                what="creating the job",
                reconcile=reconcile,
            )
        except CytomineRequestError as exc:
            if exc.status in (403, 404):
                raise CytomineConnectionError(
                    f"Check cytomine_id_software and the keys: the server refused to create a job of software "
                    f"{self.software} in project {self.project} ({exc})."
                ) from None
            raise CytomineConnectionError(f"Re-run when the server works again: {exc}.") from None
        job = answer.get("job", answer) if isinstance(answer, dict) else None
        if not isinstance(job, dict) or job.get("id") is None or not job.get("userJob"):
            raise CytomineConnectionError("Check cytomine_host: the server did not answer a job creation with a job.")
        return job

    def _end_twins(self, user: dict, job_id: int) -> None:
        """After a creation whose fate was in doubt: jobs the failed attempts created anyway are
        ended FAILED, never left NOT_LAUNCH. Checked once this job runs, so that a job this user
        launched at the same moment elsewhere (started within a second) is not taken for a twin."""
        for twin in self._created_by(user):
            if int(twin["id"]) != job_id:
                comment = f"Not run: created twice by a retried request; job {job_id} ran instead."
                _end_job(self.session, int(twin["id"]), FAILED, comment)

    def _record_parameters(self, job: dict, software: dict) -> None:
        """The job's parameters (what ``CytomineJob.start`` posts), each once."""
        values = vars(self.parameters) if self.parameters is not None else {}
        path = f"job/{job['id']}/parameter.json"
        for parameter in software.get("parameters") or []:
            name, pid = parameter.get("name"), int(parameter["id"])
            value = values[name] if name in values else parameter.get("defaultParamValue")
            body = {"job": job["id"], "softwareParameter": pid}
            if value is not None:
                body["value"] = value

            def recorded(pid: int = pid) -> dict | None:
                return next((p for p in self.session.get_collection(path) if p.get("softwareParameter") == pid), None)

            try:
                with_retries(
                    lambda body=body: self.session.post_json("jobparameter.json", body),
                    retries=self.session.retries,
                    backoff=self.session.backoff,
                    what=f"recording parameter {name}",
                    reconcile=recorded,
                )
            except CytomineRequestError as exc:
                # 409: recorded already. Parameters are a record of the run: a failure does not stop the job.
                if exc.status != 409:
                    logger.warning("could not record the job parameter %s=%r: %s", name, value, exc)


def _end_job(session: CytomineSession, job_id: int, status: int, comment: str) -> None:
    """Best effort: set a job's final status (the whole job is PUT, as the client does)."""
    try:
        job = session.get_json(f"job/{job_id}.json")
        session.put_json(f"job/{job_id}.json", {**job, "status": status, "statusComment": fit_comment(comment)})
    except Exception as exc:  # noqa: BLE001 - the server may be what failed
        logger.error("could not end job %d (%s): %s", job_id, exc, comment)


class JobStopped(BaseException):
    """The process was asked to stop by a signal (SIGTERM: how Cytomine and ``docker stop`` stop a
    job). A ``BaseException``, as ``KeyboardInterrupt``: ``except Exception`` does not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM into :class:`JobStopped` in the main thread (Python's default is to die on the
    spot, leaving the job RUNNING forever); a second signal is ignored while the job ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signum, signal.SIG_IGN)  # one stop is enough: let the job end cleanly
        raise JobStopped(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_comment(job: Job, how: str) -> str:
    """The status of a stopped job: how to resume first, then where it was."""
    percent, doing = job.latest
    where = f" during '{doing}'" if doing else ""
    fix = "Re-run the job to finish it (what was saved is kept and not done twice)"
    return f"{fix}: stopped by {how} at {percent}%{where}."


def run_app(parser: AppArgumentParser, argv: Sequence[str] | None, pipeline: Pipeline, *, app: str) -> int:
    """Parse, open the job, run ``pipeline(job, args)`` (which returns the final status comment),
    and end the job: SUCCESS (exit status 0), FAILED (1; 2 when no job could be opened for an
    invalid parameter) or KILLED when stopped by SIGTERM (143) or Ctrl-C (130). No way out of
    here leaves the job RUNNING, except the server failing while the job is ended."""
    configure_logging()  # also keeps the client's per-request INFO logs out of the job log
    with stop_on_signals():
        try:
            return _run_app(parser, argv, pipeline, app)
        except JobStopped as exc:  # before a job existed
            logger.error("stopped by %s before the job started", exc)
            return 128 + exc.signum
        except KeyboardInterrupt:
            logger.error("interrupted before the job started")
            return 130


def _run_app(parser: AppArgumentParser, argv: Sequence[str] | None, pipeline: Pipeline, app: str) -> int:
    from mtdp_core.cytomine.biaflows import biaflows_flags

    argv = sys.argv[1:] if argv is None else list(argv)

    parameter_error: ParameterError | None = None
    try:
        args, unknown = parser.parse_app_args(argv)
    except ParameterError as exc:
        parameter_error = exc
        args = _lenient_parse(parser, argv)
        unknown = []
    flags = biaflows_flags(args)
    for token in unknown:
        if token.startswith("--"):
            logger.warning("ignoring unknown option %s", token)
    try:
        job: Job = LocalJob(flags, app) if flags.local else open_cytomine_job(args, parser, flags, app)
    except MtdpError as exc:
        # No job to report to: the message is the last line of the log, which the processing
        # server shows as the job's status.
        logger.error("%s", parameter_error or exc)
        return 2 if isinstance(parameter_error or exc, ParameterError) else 1
    if parameter_error is None:
        for message in flags.warnings():
            logger.warning("%s", message)
    try:
        if parameter_error is not None:
            raise parameter_error
        comment = pipeline(job, args)
        job.succeed(comment or "Done")
        return 0
    except JobStopped as exc:
        _safe_end(job, job.stop, stopped_comment(job, str(exc)))
        return 128 + exc.signum
    except KeyboardInterrupt:
        _safe_end(job, job.stop, stopped_comment(job, "Ctrl-C"))
        return 130
    except MtdpError as exc:
        logger.debug("details", exc_info=True)
        _safe_end(job, job.fail, str(exc))
        return 1
    except BaseException as exc:  # noqa: BLE001 - any crash (SystemExit included) must end the job
        logger.error("unexpected error:\n%s", traceback.format_exc())
        _safe_end(job, job.fail, f"Unexpected error, see the job log: {type(exc).__name__}: {exc}")
        return 1
    finally:
        job.cleanup()


def _safe_end(job: Job, end: Callable[[str], None], comment: str) -> None:
    try:
        end(comment)
    except Exception as exc:  # noqa: BLE001 - the server may be what failed
        logger.error("could not end the job (%s); reason: %s", exc, comment)


def _lenient_parse(parser: AppArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The connection and BIAFLOWS options of a command line that has an invalid parameter, so
    that the job can still be opened and set FAILED with the parameter's message."""
    values: dict[str, Any] = {a.dest: a.default for a in options(parser)}
    tokens = list(argv or [])
    wanted = {
        "cytomine_host",
        "cytomine_public_key",
        "cytomine_private_key",
        "cytomine_id_project",
        "cytomine_id_software",
        "local",
        "infolder",
        "outfolder",
        "gtfolder",
        "no_download",
        "no_annotations_upload",
        "no_metrics_upload",
        "no_metrics_computation",
    }
    for action in options(parser):
        if action.dest not in wanted:
            continue
        for i, token in enumerate(tokens):
            if token in action.option_strings:
                if action.nargs == 0:
                    values[action.dest] = True
                elif i + 1 < len(tokens):
                    try:
                        values[action.dest] = action.type(tokens[i + 1]) if action.type else tokens[i + 1]
                    except Exception:  # noqa: BLE001 - a bad connection value: reported by the connection
                        values[action.dest] = tokens[i + 1]
    return argparse.Namespace(**values)
