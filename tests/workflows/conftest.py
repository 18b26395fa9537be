"""Fixtures of the app tests: the local server with a small synthetic project, the apps registered
from their descriptors, and helpers to run an app in this process (``main(argv)``, as a person
runs it with their keys) or to launch it as Cytomine does (a subprocess built from the descriptor)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from mtdp_core.server.backends import AnnotationQuery
from mtdp_core.server.testing import SeededProject, seed_synthetic_project
from tests.helpers.apps import APPS, JOB_CLASS, SUCCESS, as_argv, load_workflow
from tests.helpers.paths import REPO_ROOT as ROOT


@dataclass
class Apps:
    server: object
    project: SeededProject
    software: dict[str, int]

    def argv(self, app: str, **params) -> list[str]:
        s = self.server
        base = {
            "cytomine_host": s.url,
            "cytomine_public_key": s.public_key,
            "cytomine_private_key": s.private_key,
            "cytomine_id_project": self.project.project_id,
            "cytomine_id_software": self.software[app],
        }
        return as_argv({**base, **params})

    def run(self, app: str, *flags: str, **params) -> dict:
        """Run ``app`` in this process with the admin's keys (a job is created); returns the job row.
        ``flags``: extra command-line tokens (e.g. BIAFLOWS flags)."""
        code = load_workflow(app).main(self.argv(app, **params) + list(flags))
        job = self.last_job()
        assert (code == 0) == (job["status"] == SUCCESS), (code, job["status_comment"])
        return job

    def launch(self, app: str, **params) -> dict:
        """Launch ``app`` as Cytomine does: command line from the descriptor, a subprocess as the job user."""
        return self.server.launch(app, self.project.project_id, params, timeout=300)

    def last_job(self) -> dict:
        return max(self.server.store.jobs.list(project=self.project.project_id), key=lambda j: j["id"])

    def files(self, job: dict) -> dict[str, Path]:
        """Attached files of ``job``: name -> the file on the server's disk."""
        rows = self.server.store.meta.list_attached_files(JOB_CLASS, job["id"])
        return {r["filename"]: Path(r["storage"]) for r in rows}

    def file_names(self, job: dict) -> list[str]:
        return sorted(r["filename"] for r in self.server.store.meta.list_attached_files(JOB_CLASS, job["id"]))

    def properties(self, job: dict) -> dict[str, str]:
        return {p["key"]: p["value"] for p in self.server.store.meta.list_properties(JOB_CLASS, job["id"])}

    def algo_annotation_count(self) -> int:
        return self.server.store.annotations.count(AnnotationQuery(kind="algo"))

    def algo_term_count(self) -> int:
        return len(self.server.store.annotation_terms.list_algo())


@pytest.fixture
def apps(server, tmp_path, monkeypatch) -> Apps:
    """Three 96x64 images with six boxes each (terms tumour/stroma), the four apps registered."""
    monkeypatch.chdir(tmp_path)  # outputs of in-process runs go to ./mtdp-out
    project = seed_synthetic_project(server, tmp_path / "images", n_images=3, boxes_per_image=6)
    software = {app: server.register_app(ROOT / "descriptors" / f"{app}.json")["id"] for app in APPS}
    return Apps(server, project, software)
