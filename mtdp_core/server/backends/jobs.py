"""Jobs (one run of a software on a project), their parameters and their data files.

Rules of the core kept here: a job gets its own user with its own keys and a number (the
count of the software's jobs in the project); only people launch jobs; status is 0-8 and
progress 0-100; a parameter belongs to the job's software and is given once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from mtdp_core.server.backends.database import Database, Files, marks
from mtdp_core.server.domain import (
    Row,
    as_bool,
    as_int,
    check_parameter_value,
    file_name,
    now_ms,
    parameter_text,
    required_ids,
)
from mtdp_core.server.errors import BadRequest, Conflict, Forbidden

if TYPE_CHECKING:
    from mtdp_core.server.backends.projects import ProjectsBackend
    from mtdp_core.server.backends.software import SoftwareBackend
    from mtdp_core.server.backends.users import UsersBackend

logger = logging.getLogger(__name__)

_PARAMETER_SELECT = (
    "SELECT jp.*, sp.name, sp.human_name, sp.type, sp.idx, sp.uri, sp.uri_print, sp.uri_sort"
    " FROM job_parameter jp JOIN software_parameter sp ON sp.id = jp.software_parameter_id"
)
_INSERT_PARAMETER = (
    "INSERT INTO job_parameter (id, job_id, software_parameter_id, value, created) VALUES (?, ?, ?, ?, ?)"
)


@dataclass(eq=False)
class JobsBackend:
    db: Database
    files: Files
    users: UsersBackend
    projects: ProjectsBackend
    software: SoftwareBackend

    # ------------------------------------------------------------------ jobs
    def create(
        self, project_id: object, software_id: object, launcher: Row, parameters: Iterable[tuple[int, object]] = ()
    ) -> tuple[Row, Row]:
        """A job, its own user (with its own keys) and its parameters, as the core's JobService.add."""
        values = {"project": project_id, "software": software_id}
        pid, sid = required_ids(
            values, "project", "software", missing="A job needs 'project' and 'software' (their ids)"
        )
        self.projects.get(pid)
        software = self.software.get(sid)
        if launcher["algo"]:
            raise Forbidden("A job user cannot launch another job")
        with self.db.transaction() as db:
            number = 1 + int(
                db.execute(
                    "SELECT coalesce(max(number), 0) FROM job WHERE software_id = ? AND project_id = ?", (sid, pid)
                ).fetchone()[0]
            )
            jid = self.db.allocate_ids()
            db.execute(
                "INSERT INTO job (id, software_id, project_id, number, status, progress, created)"
                " VALUES (?, ?, ?, ?, 0, 0, ?)",
                (jid, sid, pid, number, now_ms()),
            )
            user_job = self.users.create_job_user(self.get(jid), launcher)
            for parameter_id, value in parameters:
                self.add_parameter(jid, parameter_id, value)
        logger.info("job %d created (software %s, project %d, job user %d)", jid, software["name"], pid, user_job["id"])
        return self.get(jid), user_job

    def get(self, job_id: int) -> Row:
        return self.db.get("job", job_id, "Job")

    def list(
        self, *, project: int | None = None, software: int | None = None, among: Sequence[int] | None = None
    ) -> list[Row]:
        """Jobs, newest first, of a project and/or a software; only those of the projects ``among``
        when given (None: no restriction)."""
        sql = "SELECT * FROM job WHERE 1 = 1"
        params: list[Any] = []
        if project is not None:
            sql += " AND project_id = ?"
            params.append(project)
        if among is not None:
            sql += f" AND project_id IN ({marks(len(among))})" if among else " AND 0"
            params.extend(among)
        if software is not None:
            sql += " AND software_id = ?"
            params.append(software)
        return self.db.all(sql + " ORDER BY id DESC", params)

    def update(self, job_id: int, data: dict[str, Any]) -> Row:
        """PUT job: status (0-8), progress (0-100), statusComment, rate, dataDeleted, favorite."""
        job = self.get(job_id)
        status = as_int(data.get("status", job["status"]), "status")
        if status is None or not 0 <= status <= 8:
            raise BadRequest(f"Invalid job status {data.get('status')!r}: use 0 to 8 (2 running, 3 success, 4 failed)")
        progress = _progress(data.get("progress", job["progress"]))
        comment = data.get("statusComment", job["status_comment"])
        rate = data.get("rate", job["rate"])
        try:
            rate = None if rate is None or rate == -1 else float(rate)
        except (TypeError, ValueError):
            raise BadRequest(f"Invalid job rate {rate!r}: a number is expected") from None
        flags = [int(as_bool(data.get(key, job[column]))) for key, column in _FLAGS]
        with self.db.transaction() as db:
            db.execute(
                "UPDATE job SET status = ?, progress = ?, status_comment = ?, rate = ?, data_deleted = ?, favorite = ?,"
                " updated = ? WHERE id = ?",
                (status, progress, None if comment is None else str(comment), rate, *flags, now_ms(), job_id),
            )
        return self.get(job_id)

    def set_status(self, job_id: int, status: int, comment: str | None = None, progress: int | None = None) -> Row:
        data: dict[str, Any] = {"status": status}
        if comment is not None:
            data["statusComment"] = comment
        if progress is not None:
            data["progress"] = progress
        return self.update(job_id, data)

    def delete(self, job_id: int) -> Row:
        job = self.get(job_id)
        self.db.delete("job", job_id, ("job_parameter", "job_id"), ("job_data", "job_id"))
        return job

    # ------------------------------------------------------------------ parameters
    def add_parameter(self, job_id: object, software_parameter_id: object, value: object) -> Row:
        values = {"job": job_id, "softwareParameter": software_parameter_id}
        missing = "A job parameter needs 'job' and 'softwareParameter' (their ids)"
        jid, spid = required_ids(values, "job", "softwareParameter", missing=missing)
        job = self.get(jid)
        param = self.software.get_parameter(spid)
        if param["software_id"] != job["software_id"]:
            raise BadRequest(f"Software parameter {spid} does not belong to the software of job {jid}")
        check_parameter_value(param, parameter_text(value))
        with self.db.transaction() as db:
            if self._parameter_id(jid, spid) is not None:
                raise Conflict(f"Job {jid} already has a value for parameter {param['name']!r}")
            jpid = self.db.allocate_ids()
            db.execute(_INSERT_PARAMETER, (jpid, jid, spid, parameter_text(value), now_ms()))
        return self.get_parameter(jpid)

    def get_parameter(self, jp_id: int) -> Row:
        return self.db.require(_PARAMETER_SELECT + " WHERE jp.id = ?", (jp_id,), f"JobParameter {jp_id} not found")

    def list_parameters(self, job_id: int) -> list[Row]:
        self.get(job_id)
        return self.db.all(_PARAMETER_SELECT + " WHERE jp.job_id = ? ORDER BY jp.created, jp.id", (job_id,))

    def set_parameter(self, job_id: int, software_parameter_id: int, value: object) -> None:
        """Insert or replace a job parameter (used when the server fills set-by-server values)."""
        with self.db.transaction() as db:
            db.execute(
                "DELETE FROM job_parameter WHERE job_id = ? AND software_parameter_id = ?",
                (job_id, software_parameter_id),
            )
            values = (self.db.allocate_ids(), job_id, software_parameter_id, parameter_text(value), now_ms())
            db.execute(_INSERT_PARAMETER, values)

    def _parameter_id(self, job_id: int, software_parameter_id: int) -> int | None:
        return self.db.scalar(
            "SELECT id FROM job_parameter WHERE job_id = ? AND software_parameter_id = ?",
            (job_id, software_parameter_id),
        )

    # ------------------------------------------------------------------ job data
    def create_data(self, job_id: object, key: object, filename: object) -> Row:
        """A job data entry (its file is uploaded next, with :meth:`upload_data`)."""
        jid = as_int(job_id, "job")
        if jid is None:
            raise BadRequest("Job data needs 'job' (its id)")
        self.get(jid)
        with self.db.transaction() as db:
            did = self.db.allocate_ids()
            db.execute(
                "INSERT INTO job_data (id, job_id, key, filename, size, created) VALUES (?, ?, ?, ?, 0, ?)",
                (
                    did,
                    jid,
                    None if key is None else str(key),
                    None if filename is None else file_name(filename, "data"),
                    now_ms(),
                ),
            )
        return self.get_data(did)

    def get_data(self, data_id: int) -> Row:
        return self.db.get("job_data", data_id, "JobData")

    def list_data(self, job_id: int) -> list[Row]:
        self.get(job_id)
        return self.db.all("SELECT * FROM job_data WHERE job_id = ? ORDER BY id", (job_id,))

    def upload_data(self, data_id: int, filename: str, data: bytes | BinaryIO) -> Row:
        """The file of a job data entry (its bytes, or a binary stream)."""
        row = self.get_data(data_id)
        path = self.files.save("jobdata", data_id, row["filename"] or file_name(filename, "data"), data)
        with self.db.transaction() as db:
            db.execute(
                "UPDATE job_data SET storage = ?, size = ?, filename = ?, updated = ? WHERE id = ?",
                (str(path), path.stat().st_size, path.name, now_ms(), data_id),
            )
        return self.get_data(data_id)

    def delete_data(self, data_id: int) -> Row:
        row = self.get_data(data_id)
        self.db.delete("job_data", data_id)
        if row["storage"]:
            self.files.remove(row["storage"])
        return row


#: Boolean job fields: body key and column.
_FLAGS = (("dataDeleted", "data_deleted"), ("favorite", "favorite"))


def _progress(value: object) -> int:
    try:
        progress = int(float(value)) if value is not None else 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid job progress {value!r}: use a number from 0 to 100") from None
    if not 0 <= progress <= 100:
        raise BadRequest(f"Invalid job progress {value!r}: use a number from 0 to 100")
    return progress
