"""Running the apps in tests: job statuses, fast settings, parameters as a command line, and
:class:`Apps`, the apps registered on a local server for one project."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtdp_core.server.backends import AnnotationQuery
from tests.helpers.scripts import descriptors

#: The apps (workflows/<app>/run.py) and the loader of their run.py as a module.
APPS = descriptors.APPS
load_workflow = descriptors.load_workflow

JOB_CLASS = "be.cytomine.processing.Job"
SUCCESS, FAILED = 3, 4
#: Tiny and fast: a random ResNet18 on 32-pixel crops (the apps' logic, not the model, is tested).
FAST = {
    "backbone": "resnet18",
    "weights": "random",
    "image_size": 32,
    "crop_max_size": 32,
    "batch_size": 8,
    "n_workers": 0,
}


def as_argv(params: dict) -> list[str]:
    """``{"cv_folds": 3, "balanced_classes": True}`` -> ``["--cv_folds", "3", "--balanced_classes", "true"]``."""
    argv = []
    for key, value in params.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        argv += [f"--{key}", str(value)]
    return argv


@dataclass
class Apps:
    server: object
    project: Any  # a SeededProject, or anything with a project_id
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
