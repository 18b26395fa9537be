"""Fixtures of the mtdp_core.cytomine tests: the local server, a seeded project, and a job user's
session (what an app launched by Cytomine holds)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from mtdp_core.cytomine.client import CytomineSession

PROBE_DESCRIPTOR = {
    "name": "MTDP-Test-App",
    "schema-version": "cytomine-0.1",
    "container-image": {"image": "mtdp/s_mtdp-test-app", "type": "singularity"},
    "command-line": "python /app/run.py [CYTOMINE_HOST]",
    "inputs": [
        {
            "id": "cytomine_host",
            "type": "String",
            "optional": False,
            "value-key": "[@ID]",
            "command-line-flag": "--@id",
            "set-by-server": True,
        }
    ],
}


@dataclass
class JobUser:
    session: CytomineSession
    job: dict
    user: dict
    software: dict


@pytest.fixture
def software(server, tmp_path):
    path = tmp_path / "test_app.json"
    path.write_text(json.dumps(PROBE_DESCRIPTOR))
    return server.register_app(path)


@pytest.fixture
def make_job_user(server, seeded, software):
    """Creates a job of the test software and returns a session with its job user's keys."""

    def make() -> JobUser:
        job, user = server.store.jobs.create(seeded.project_id, software["id"], server.admin)
        session = CytomineSession.connect(server.url, user["public_key"], user["private_key"], backoff=0.01)
        return JobUser(session, job, user, software)

    return make


@pytest.fixture
def admin_session(server):
    return CytomineSession.connect(server.url, server.public_key, server.private_key, backoff=0.01)
