"""Users and their API keys: people (the admin and those made with ``mtdp server user add``)
and job users (one per job, with its own keys, as the core's UserJob)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtdp_core.server.auth import generate_keys
from mtdp_core.server.backends.database import Database, marks
from mtdp_core.server.domain import Row, now_ms
from mtdp_core.server.errors import BadRequest, Conflict

if TYPE_CHECKING:
    from mtdp_core.server.backends.projects import ProjectsBackend

_INSERT_USER = (
    "INSERT INTO sec_user (id, username, firstname, lastname, email, public_key, private_key, is_admin, algo,"
    " job_id, launcher_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(eq=False)
class UsersBackend:
    db: Database
    projects: ProjectsBackend

    def create(
        self,
        username: str,
        *,
        firstname: str | None = None,
        lastname: str | None = None,
        email: str | None = None,
        admin: bool = False,
        public_key: str | None = None,
        private_key: str | None = None,
    ) -> Row:
        username = (username or "").strip()
        if not username or any(c.isspace() for c in username):
            raise BadRequest(f"Invalid username {username!r}: use a non-empty name without spaces")
        if (public_key is None) != (private_key is None):
            raise BadRequest("Give both the public and the private key, or neither (new keys are generated)")
        if public_key is None:
            public_key, private_key = generate_keys()
        with self.db.transaction() as db:
            if db.execute("SELECT 1 FROM sec_user WHERE username = ?", (username,)).fetchone():
                raise Conflict(f"User {username!r} already exists: choose another username")
            if db.execute("SELECT 1 FROM sec_user WHERE public_key = ?", (public_key,)).fetchone():
                raise Conflict("This public key is already used by another user: generate new keys")
            uid = self.db.allocate_ids()
            names = (firstname or username, lastname or username, email or f"{username}@localhost")
            db.execute(
                _INSERT_USER, (uid, username, *names, public_key, private_key, int(admin), 0, None, None, now_ms())
            )
        return self.get(uid)

    def create_job_user(self, job: Row, launcher: Row) -> Row:
        """The job's own user (``JOB[launcher]-id``), with new keys."""
        public_key, private_key = generate_keys()
        with self.db.transaction() as db:
            uid = self.db.allocate_ids()
            username = f"JOB[{launcher['username']}]-{job['id']}"
            values = (uid, username, "Job", str(job["id"]), None, public_key, private_key, 0, 1)
            db.execute(_INSERT_USER, (*values, job["id"], launcher["id"], now_ms()))
        return self.get(uid)

    def ensure_admin(self, public_key: str | None = None, private_key: str | None = None) -> Row:
        """The ``admin`` user, created on first start; its keys set when given."""
        with self.db.transaction():
            admin = self.find_by_username("admin")
            if admin is None:
                return self.create(
                    "admin",
                    firstname="Admin",
                    lastname="Local",
                    admin=True,
                    public_key=public_key,
                    private_key=private_key,
                )
            if public_key and private_key and (admin["public_key"], admin["private_key"]) != (public_key, private_key):
                admin = self.set_keys(admin["id"], public_key, private_key)
        return admin

    def get(self, user_id: int) -> Row:
        return self.db.get("sec_user", user_id, "User")

    def get_many(self, user_ids: Iterable[int]) -> list[Row]:
        ids = list(user_ids)
        if not ids:
            return []
        return self.db.all(f"SELECT * FROM sec_user WHERE id IN ({marks(len(ids))})", ids)

    def find_by_public_key(self, public_key: str) -> Row | None:
        return self.db.one("SELECT * FROM sec_user WHERE public_key = ?", (public_key,))

    def find_by_username(self, username: str) -> Row | None:
        return self.db.one("SELECT * FROM sec_user WHERE username = ?", (username,))

    def job_user(self, job_id: int) -> Row | None:
        """The user a job runs as (None for an unknown job)."""
        return self.db.one("SELECT * FROM sec_user WHERE job_id = ?", (job_id,))

    def list(self, *, include_jobs: bool = False, project: int | None = None) -> list[Row]:
        """People (and job users when asked; with ``project``, the job users of its jobs)."""
        if project is not None:
            self.projects.get(project)
            if include_jobs:
                return self.db.all(
                    "SELECT u.* FROM sec_user u WHERE u.algo = 0"
                    " OR u.job_id IN (SELECT id FROM job WHERE project_id = ?) ORDER BY u.id",
                    (project,),
                )
        return self.db.all("SELECT * FROM sec_user" + ("" if include_jobs else " WHERE algo = 0") + " ORDER BY id")

    def list_job_users(self, project: int) -> list[Row]:
        self.projects.get(project)
        return self.db.all(
            "SELECT u.* FROM sec_user u JOIN job j ON j.id = u.job_id WHERE j.project_id = ? ORDER BY u.id DESC",
            (project,),
        )

    def update_profile(self, user_id: int, data: dict[str, Any]) -> Row:
        """First name, last name and e-mail (the rest of a user is not editable over the API)."""
        row = self.get(user_id)
        fields = [data.get(key, row[key]) for key in ("firstname", "lastname", "email")]
        with self.db.transaction() as db:
            db.execute("UPDATE sec_user SET firstname = ?, lastname = ?, email = ? WHERE id = ?", (*fields, user_id))
        return self.get(user_id)

    def set_keys(self, user_id: int, public_key: str, private_key: str) -> Row:
        with self.db.transaction() as db:
            if db.execute("SELECT 1 FROM sec_user WHERE public_key = ? AND id <> ?", (public_key, user_id)).fetchone():
                raise Conflict("This public key is already used by another user")
            db.execute(
                "UPDATE sec_user SET public_key = ?, private_key = ?, updated = ? WHERE id = ?",
                (public_key, private_key, now_ms(), user_id),
            )
        return self.get(user_id)
