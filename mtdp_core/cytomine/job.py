"""Running an app as a Cytomine job, or locally (BIAFLOWS ``--local``), through one interface.

Every app's ``main(argv)`` is ``run_app(parser, argv, pipeline)``:

1. the app's own parser types and checks the parameters (``parse_known_args``: Cytomine
   leaves placeholders of empty values in the command, containers prefix it with theirs);
2. the job is opened: with the official client's ``CytomineJob`` when connected (a person's
   keys create a job and switch to its job user; a job user's keys, as the server launches
   apps, use that job), or a :class:`LocalJob` with ``--local`` (no server: progress is
   logged, outputs go to ``--outfolder``);
3. ``pipeline(job, args)`` runs, reporting progress and status comments at each stage
   (throttled: one update per stage and a few per second at most in loops), attaching files
   and setting job properties;
4. the job ends SUCCESS at 100%, or FAILED with a message of at most 255 characters that
   leads with the fix: an invalid parameter (even one the client's own parser would have
   crashed on), an :class:`~mtdp_core.errors.MtdpError` (its message), or an unexpected
   error (its type and message, "see the job log").

The client's ``CytomineJob.from_cli`` is not used to parse: it exits the process on a bad
value (argparse) before the job exists, so the job would not say what was wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mtdp_core.cytomine.biaflows import BiaflowsFlags
from mtdp_core.cytomine.client import CytomineSession, check_connected
from mtdp_core.cytomine.errors import CytomineConnectionError, ParameterError, fit_comment
from mtdp_core.cytomine.params import AppArgumentParser, descriptor_values
from mtdp_core.errors import MtdpError
from mtdp_core.logs import configure_logging

logger = logging.getLogger(__name__)

RUNNING, SUCCESS, FAILED = 2, 3, 4
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
        if done < total and self._last is not None and now - self._last < self.min_interval:
            return
        self._last = now
        fraction = done / total if total else 1.0
        progress = int(self.start + (self.end - self.start) * fraction)
        self.job.progress(progress, f"{self.name} ({done}/{total}){'. ' + detail if detail else ''}")


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

    def _prepare_folders(self) -> None:
        if self.outfolder is None:
            self.outfolder = default_outfolder(self.app, self.id)
        self.outfolder.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mtdp-{self.app}-"))

    def stage(self, name: str, start: int, end: int) -> Stage:
        """Start a stage: progress ``start``% with ``name`` as status comment."""
        self.progress(start, name)
        return Stage(self, name, start, end)

    def progress(self, percent: int, comment: str) -> None:
        percent = max(self._progress, min(99, int(percent)))  # 100 is the end, set by succeed()
        self._progress = percent
        self._send_progress(percent, fit_comment(comment))

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

    def cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def default_outfolder(app: str, job_id: int | str) -> Path:
    """``./mtdp-out/<app>-<job id>`` (the job's folder when a processing server runs it), or a
    temporary folder when the working directory is read-only (some containers)."""
    base = Path.cwd() / "mtdp-out"
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
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


class CytomineJobRun(Job):
    """A Cytomine job opened with the client's ``CytomineJob``."""

    local = False

    def __init__(self, cytomine_job: Any, flags: BiaflowsFlags, app: str) -> None:
        super().__init__(flags, app)
        self.cj = cytomine_job
        self.id = int(cytomine_job.job.id)
        self.session = CytomineSession(cytomine_job)
        self._prepare_folders()

    @property
    def project_id(self) -> int:
        return int(self.cj.project.id)

    @property
    def software_name(self) -> str:
        return str(self.cj.software.name)

    @property
    def job_user_id(self) -> int | None:
        return getattr(self.cj.job, "userJob", None)

    def _update(self, **changes: Any) -> None:
        # The whole job is PUT (as the client does); retried, since a lost update is not harmful.
        job = self.cj.job
        for key, value in changes.items():
            setattr(job, key, value)
        self.session.put_json(f"job/{job.id}.json", json.loads(job.to_json()))

    def _send_progress(self, percent: int, comment: str) -> None:
        logger.info("progress %3d%%: %s", percent, comment)
        try:
            self._update(progress=percent, statusComment=comment, status=RUNNING)
        except MtdpError as exc:  # progress is informative: never fail a job for it
            logger.warning("could not update the job's progress: %s", exc)

    def _attach(self, path: Path, filename: str) -> None:
        self.session.upload(
            "attachedfile.json",
            path,
            {"domainClassName": JOB_CLASS, "domainIdent": self.id, "filename": filename},
            filename=filename,
        )
        logger.info("attached %s to job %d", filename, self.id)

    def _set_property(self, key: str, value: str) -> None:
        path = f"domain/{JOB_CLASS}/{self.id}/property.json"
        body = {"domainClassName": JOB_CLASS, "domainIdent": self.id, "key": key, "value": value}
        try:
            self.session.post_json(path, body, retry=True)
        except MtdpError as exc:
            if getattr(exc, "status", None) != 409:
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
    from cytomine import CytomineJob

    host, public_key, private_key, project, software = _connection(args)
    try:
        cj = CytomineJob(
            host,
            public_key,
            private_key,
            software,
            project,
            parameters=descriptor_values(args, parser),
            configure_logging=False,
        )
        check_connected(cj, host)
        if not cj.project:
            raise CytomineConnectionError(
                f"Check cytomine_id_project: project {project} does not exist or is not readable with these keys."
            )
        if not cj.software:
            raise CytomineConnectionError(f"Check cytomine_id_software: software {software} is not registered.")
        cj.start()
    except MtdpError:
        raise
    except Exception as exc:  # requests and client errors: all mean the job could not be opened
        raise CytomineConnectionError(
            f"Check cytomine_host and that the server runs: cannot open the job on {host} ({type(exc).__name__}: {exc})"
        ) from exc
    run = CytomineJobRun(cj, flags, app)
    logger.info(
        "job %d of %s (software %d) on project %d, outputs in %s",
        run.id,
        run.software_name,
        software,
        project,
        run.outfolder,
    )
    return run


def run_app(parser: AppArgumentParser, argv: Sequence[str] | None, pipeline: Pipeline, *, app: str) -> int:
    """Parse, open the job, run ``pipeline(job, args)`` (which returns the final status comment),
    and end the job; the exit status is 0 on SUCCESS, 1 on FAILED, 2 when no job could be opened
    for an invalid parameter."""
    configure_logging()  # also keeps the client's per-request INFO logs out of the job log
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
    except MtdpError as exc:
        logger.debug("details", exc_info=True)
        _safe_fail(job, str(exc))
        return 1
    except KeyboardInterrupt:
        _safe_fail(job, "Re-run the job: it was interrupted.")
        return 130
    except Exception as exc:  # noqa: BLE001 - any crash must end the job with a useful status
        logger.error("unexpected error:\n%s", traceback.format_exc())
        _safe_fail(job, f"Unexpected error, see the job log: {type(exc).__name__}: {exc}")
        return 1
    finally:
        job.cleanup()


def _safe_fail(job: Job, comment: str) -> None:
    try:
        job.fail(comment)
    except Exception as exc:  # noqa: BLE001 - the server may be what failed
        logger.error("could not set the job FAILED (%s); reason: %s", exc, comment)


def _lenient_parse(parser: AppArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The connection and BIAFLOWS options of a command line that has an invalid parameter, so
    that the job can still be opened and set FAILED with the parameter's message."""
    values: dict[str, Any] = {a.dest: a.default for a in parser._actions if a.dest != "help"}
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
    for action in parser._actions:
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
