"""Running jobs: the command line exactly as Cytomine builds it, and a processing server.

Command line (core ``JobRuntimeService``, checked in the Grails sources):

1. ``initJob``: set-by-server parameters get job parameters: the first parameter whose name,
   upper-cased without underscores, is ``HOST``/``CYTOMINEHOST`` gets the server URL,
   ``PUBLICKEY``/``CYTOMINEPUBLICKEY`` and ``PRIVATEKEY``/``CYTOMINEPRIVATEKEY`` the **job
   user's** keys, ``IDSOFTWARE``/``CYTOMINEIDSOFTWARE`` and ``IDPROJECT``/``CYTOMINEIDPROJECT``
   the ids.
2. ``retrieveParameters``: for each non-server parameter, in ``index`` order, the value is the
   job parameter if there is one, else the default; a required parameter without a value is an
   error; empty values are skipped, **so their placeholder stays in the command literally**.
3. ``getCommandJobWithArgs``: in the software's ``executeCommand``, each value key (a regex:
   the key with ``[`` ``]`` escaped) is replaced by ``flag + " " + value`` (just ``value``
   without flag); the result is split on single spaces (Java ``String.split(" ")``: empty
   tokens kept, trailing ones dropped).

Runners (the processing server's part):

- ``local``: the executable prefix of the command line (everything before the first value key,
  e.g. ``python /app/run.py``) is replaced by a local command (``python workflows/x/run.py``);
- ``container``: ``{podman|docker} run --rm --network host IMAGE <command line>``.

The process's stdout and stderr go to ``log.out`` in the job's folder, which is attached to
the job as a file when it ends (as the router does). A job whose process ends while the job
is still NOT_LAUNCH/INQUEUE/WAIT, or RUNNING with a non-zero exit code, is set FAILED with the
end of the error as status comment.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.backends.database import private_folder, write_private
from mtdp_core.server.domain import (
    CLASS_NAMES,
    FAILED,
    INQUEUE,
    KILLED,
    NOT_LAUNCH,
    RUNNING,
    WAIT,
    Row,
    check_parameter_value,
)
from mtdp_core.server.errors import BadRequest, NotFound

logger = logging.getLogger(__name__)

#: Set-by-server parameters, by the core's normalised names.
SERVER_VALUES = (
    ("host", ("HOST", "CYTOMINEHOST")),
    ("public_key", ("PUBLICKEY", "CYTOMINEPUBLICKEY")),
    ("private_key", ("PRIVATEKEY", "CYTOMINEPRIVATEKEY")),
    ("id_software", ("IDSOFTWARE", "CYTOMINEIDSOFTWARE")),
    ("id_project", ("IDPROJECT", "CYTOMINEIDPROJECT")),
)
SECRET_NAMES = ("PRIVATEKEY", "CYTOMINEPRIVATEKEY")
RUNNERS = ("local", "container")


def _normalised(name: str) -> str:
    return name.upper().replace("_", "")


def java_split(command: str) -> list[str]:
    """Java's ``String.split(" ")``: empty tokens between spaces kept, trailing ones removed."""
    tokens = command.split(" ")
    while tokens and tokens[-1] == "":
        tokens.pop()
    return tokens


def key_regex(value_key: str) -> str:
    return value_key.replace("[", "\\[").replace("]", "\\]")


def substitute(command: str, values: Sequence[tuple[Row, str]]) -> str:
    """Replace each parameter's value key (in index order) by ``flag value``."""
    for parameter, value in values:
        flag = parameter["command_line_flag"] or ""
        replacement = f"{flag} {value}" if flag else value
        command = re.sub(key_regex(parameter["value_key"]), lambda _m, r=replacement: r, command)
    return command


def parameter_values(store: CytomineStore, job: Row) -> list[tuple[Row, str]]:
    """The core's retrieveParameters: (parameter, value) of the non-server parameters with a value."""
    given = {jp["software_parameter_id"]: jp["value"] for jp in store.jobs.list_parameters(job["id"])}
    values = []
    for parameter in store.software.list_parameters(job["software_id"], server_parameters=False):
        value = given[parameter["id"]] if parameter["id"] in given else parameter["default_value"]
        if parameter["id"] not in given and parameter["required"] and (value is None or value == ""):
            raise BadRequest(
                f"Argument {parameter['name']} is required: give it a value (--param {parameter['name']}=VALUE)"
            )
        if value:
            values.append((parameter, value))
    return values


def cytomine_command(store: CytomineStore, job: Row) -> list[str]:
    """The command a real core sends to its processing server for ``job``."""
    software = store.software.get(job["software_id"])
    if not software["execute_command"]:
        raise BadRequest(f"Software {software['name']!r} has no command: register it from a descriptor")
    return java_split(substitute(software["execute_command"], parameter_values(store, job)))


def application_arguments(store: CytomineStore, job: Row) -> tuple[list[str], int]:
    """The descriptor's command line with values substituted, split as Cytomine does, and the
    number of leading tokens that form its executable prefix (before the first value key)."""
    software = store.software.get(job["software_id"])
    template = software["command_line"]
    if not template:
        raise BadRequest(
            f"Software {software['name']!r} has no descriptor command line: register it with "
            "'mtdp server register-app descriptors/<app>.json'"
        )
    parameters = store.software.list_parameters(job["software_id"], server_parameters=False)
    positions = [m.start() for p in parameters if (m := re.search(key_regex(p["value_key"]), template))]
    prefix = template[: min(positions)] if positions else template
    return java_split(substitute(template, parameter_values(store, job))), len(java_split(prefix))


def mask_secrets(argv: Sequence[str], secrets: Sequence[str]) -> str:
    """A command for the logs, with private keys replaced by stars (wherever they appear)."""
    text = " ".join(argv)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "*****")
    return text


def typed_parameters(parameters: Sequence[Row], values: Mapping[str, object]) -> list[tuple[int, str]]:
    """Check user-given values (by parameter name) as the web UI does; (software parameter id, text).

    ``parameters`` are software parameter rows of the store.
    """
    by_name = {p["name"]: p for p in parameters}
    checked = []
    for name, value in values.items():
        parameter = by_name.get(name)
        if parameter is None:
            choices = ", ".join(p["name"] for p in parameters if not p["set_by_server"])
            raise BadRequest(f"Unknown parameter {name!r}: this software has {choices}")
        if parameter["set_by_server"]:
            raise BadRequest(f"Parameter {name!r} is set by the server: do not give it")
        text = value_text(value)
        check_parameter_value(parameter, text)
        checked.append((parameter["id"], text))
    return checked


def value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


@dataclass
class _Running:
    process: subprocess.Popen
    log_path: Path
    thread: threading.Thread
    killed: bool = False
    timed_out: bool = False
    exit_code: int | None = None


class JobLauncher:
    """Runs jobs as subprocesses (or containers) and follows them to the end.

    Args:
        store: the server's store.
        jobs_dir: where each job gets a folder (working directory and ``log.out``).
        engine: container engine (``podman``/``docker``); default ``$MTDP_CONTAINER_ENGINE``, then
            whichever is installed.
    """

    def __init__(self, store: CytomineStore, jobs_dir: str | Path, *, engine: str | None = None) -> None:
        self.store = store
        self.jobs_dir = Path(jobs_dir)
        self.engine = engine
        self._running: dict[int, _Running] = {}
        self._finished: dict[int, int] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ preparing
    def init_job(self, job: Row, base_url: str) -> None:
        """Fill the set-by-server parameters (the core's initJob)."""
        user_job = self.store.users.job_user(job["id"])
        if user_job is None:
            raise NotFound(f"Job {job['id']} has no job user")
        values = {
            "host": base_url,
            "public_key": user_job["public_key"],
            "private_key": user_job["private_key"],
            "id_software": str(job["software_id"]),
            "id_project": str(job["project_id"]),
        }
        parameters = self.store.software.list_parameters(job["software_id"])
        for key, names in SERVER_VALUES:
            match = next((p for p in parameters if p["set_by_server"] and _normalised(p["name"]) in names), None)
            if match is not None:
                self.store.jobs.set_parameter(job["id"], match["id"], values[key])

    def process_argv(
        self, job: Row, *, runner: str | None = None, image: str | None = None, engine: str | None = None
    ) -> list[str]:
        """The argv actually run for ``job`` with ``runner``."""
        software = self.store.software.get(job["software_id"])
        runner = runner or ("local" if software.get("local_command") else "container")
        if runner not in RUNNERS:
            raise BadRequest(f"Unknown runner {runner!r}: use local or container")
        arguments, prefix_length = application_arguments(self.store, job)
        if runner == "local":
            local = software.get("local_command")
            if not local:
                raise BadRequest(
                    f"Software {software['name']!r} has no local command: register it with "
                    '--local-command "python workflows/<app>/run.py" or use the container runner'
                )
            return [*local, *arguments[prefix_length:]]
        engine = (
            engine
            or self.engine
            or os.environ.get("MTDP_CONTAINER_ENGINE")
            or next((e for e in ("podman", "docker") if shutil.which(e)), None)
        )
        if engine is None:
            raise BadRequest(
                "No container engine: install podman or docker, set MTDP_CONTAINER_ENGINE, or use the local runner"
            )
        image = image or software.get("container_image")
        if not image:
            raise BadRequest(f"Software {software['name']!r} has no container image: give --image")
        return [engine, "run", "--rm", "--network", "host", image, *arguments]

    # ------------------------------------------------------------------ running
    def execute(
        self,
        job_id: int,
        base_url: str,
        *,
        wait: bool = False,
        runner: str | None = None,
        image: str | None = None,
        engine: str | None = None,
        timeout: float | None = None,
    ) -> Row:
        """Start ``job_id`` (status INQUEUE, then the app sets RUNNING); wait for it if asked."""
        job = self.store.jobs.get(job_id)
        with self._lock:
            if job_id in self._running:
                raise BadRequest(f"Job {job_id} is already running")
        if job["status"] != NOT_LAUNCH:
            raise BadRequest(f"Job {job_id} was already launched (status {job['status']}): create a new job")
        self.init_job(job, base_url)
        real_command = cytomine_command(self.store, job)
        argv = self.process_argv(job, runner=runner, image=image, engine=engine)
        user_job = self.store.users.job_user(job_id)
        secrets = [user_job["private_key"]] if user_job else []
        logger.info("job %d: Cytomine command: %s", job_id, mask_secrets(real_command, secrets))
        logger.info("job %d: running: %s", job_id, mask_secrets(argv, secrets))
        folder = private_folder(self.jobs_dir / str(job_id))
        log_path = write_private(folder / "log.out", b"")  # the job's output may hold what it read: 0600
        self.store.jobs.set_status(job_id, INQUEUE, "Job launched by the local server", 0)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            try:
                process = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=folder,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                self.store.jobs.set_status(job_id, FAILED, f"Cannot start the job process {argv[0]!r}: {exc}"[:255], 0)
                raise BadRequest(f"Cannot start the job process {argv[0]!r}: {exc}") from None
        running = _Running(
            process, log_path, threading.Thread(target=self._follow, args=(job_id,), daemon=True, name=f"job-{job_id}")
        )
        with self._lock:
            self._running[job_id] = running
        running.thread.start()
        if wait:
            return self.wait(job_id, timeout)
        return self.store.jobs.get(job_id)

    def wait(self, job_id: int, timeout: float | None = None) -> Row:
        """Block until the job's process ended (killing it after ``timeout`` seconds)."""
        with self._lock:
            running = self._running.get(job_id)
        if running is not None:
            running.thread.join(timeout)
            if running.thread.is_alive():
                running.timed_out = True
                self._terminate(running)
                running.thread.join()
        return self.store.jobs.get(job_id)

    def kill(self, job_id: int) -> Row:
        with self._lock:
            running = self._running.get(job_id)
        if running is None:
            raise BadRequest(f"Job {job_id} is not running here")
        running.killed = True
        self._terminate(running)
        running.thread.join(30)
        return self.store.jobs.get(job_id)

    def process_state(self, job_id: int) -> dict[str, Any] | None:
        """``{"process": "running"|"exited", "exitCode": rc}`` for jobs started by this launcher."""
        with self._lock:
            if job_id in self._running:
                return {"process": "running", "exitCode": None}
            if job_id in self._finished:
                return {"process": "exited", "exitCode": self._finished[job_id]}
        return None

    def shutdown(self) -> None:
        """Kill the jobs still running (the server is stopping)."""
        with self._lock:
            running = list(self._running.items())
        for job_id, item in running:
            logger.warning("job %d still running at shutdown: killing it", job_id)
            item.killed = True
            self._terminate(item)
            item.thread.join(30)

    @staticmethod
    def _terminate(running: _Running) -> None:
        if running.process.poll() is not None:
            return
        try:
            os.killpg(running.process.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            running.process.terminate()
        try:
            running.process.wait(10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(running.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                running.process.kill()

    def _follow(self, job_id: int) -> None:
        with self._lock:
            running = self._running[job_id]
        code = running.process.wait()
        running.exit_code = code
        try:
            self._finish(job_id, running, code)
        except Exception:  # a follower thread must never die silently
            logger.exception("job %d: could not record the end of the job", job_id)
        finally:
            with self._lock:
                self._running.pop(job_id, None)
                self._finished[job_id] = code

    def _finish(self, job_id: int, running: _Running, code: int) -> None:
        job = self.store.jobs.get(job_id)
        tail = _log_tail(running.log_path)
        if running.killed or running.timed_out:
            reason = "timed out" if running.timed_out else "killed"
            self.store.jobs.set_status(job_id, KILLED, f"Job {reason} (process exit code {code})", job["progress"])
        elif job["status"] in (NOT_LAUNCH, INQUEUE, WAIT):
            message = failure_message(code, tail) if code else "The job process ended without starting the job"
            self.store.jobs.set_status(job_id, FAILED, message, 0)
        elif job["status"] == RUNNING and code != 0:
            self.store.jobs.set_status(job_id, FAILED, failure_message(code, tail), job["progress"])
        elif job["status"] == RUNNING:
            logger.warning("job %d: process exited with code 0 but left the job RUNNING", job_id)
        if running.log_path.exists():
            with open(running.log_path, "rb") as log:
                self.store.meta.add_attached_file(CLASS_NAMES["job"], job_id, "log.out", log)
        final = self.store.jobs.get(job_id)
        level = logging.INFO if final["status"] not in (FAILED, KILLED) else logging.WARNING
        logger.log(
            level,
            "job %d ended: exit code %d, status %d (%s), log %s",
            job_id,
            code,
            final["status"],
            final["status_comment"],
            running.log_path,
        )


def _log_tail(path: Path, max_bytes: int = 8192) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*)$")


def failure_message(code: int, log_tail: str) -> str:
    """ "Exit code N: <the error>", or for a process ended by a signal (a negative code) which
    signal and what usually sends it; at most 255 characters (what Cytomine shows)."""
    lines = [line.rstrip() for line in log_tail.splitlines() if line.strip()]
    error = next((m.group(1) for line in reversed(lines) if (m := _ERROR_LINE.match(line))), lines[-1] if lines else "")
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = _SIGNAL_CAUSES.get(name, "re-run the job")
        head = f"Killed by {name} ({why})"
        return (f"{head}; last log line: {error}" if error else head)[:255]
    return f"Exit code {code}: {error}".strip()[:255]


#: What usually sends a signal that ends a job process outside the launcher.
_SIGNAL_CAUSES = {
    "SIGKILL": "the system may have run out of memory: lower batch_size or n_workers, or give the machine more",
    "SIGTERM": "stopped from outside the server: re-run the job",
    "SIGINT": "interrupted: re-run the job",
    "SIGSEGV": "a crash in a native library: see the job log",
}
