"""The job API of client 3.0.0 (CytomineJob, Job, JobParameter, JobData) against the server."""

from __future__ import annotations

import pytest
from cytomine import CytomineJob
from cytomine.models import (
    Annotation,
    AnnotationCollection,
    AttachedFile,
    AttachedFileCollection,
    Job,
    JobData,
    JobParameterCollection,
    Project,
    Property,
    PropertyCollection,
    Software,
    SoftwareParameterCollection,
)
from cytomine.models.software import JobDataCollection

from mtdp_core.server.domain import FAILED, RUNNING, SUCCESS
from tests.server.test_routes import _raw


@pytest.fixture
def probe(server, probe_descriptor):
    return server.register_app(probe_descriptor)


def _argv(server, software_id, project_id, *extra):
    return [
        "--host",
        server.url,
        "--public_key",
        server.public_key,
        "--private_key",
        server.private_key,
        "--software_id",
        str(software_id),
        "--project_id",
        str(project_id),
        *extra,
    ]


def test_software_and_parameters_as_the_client_reads_them(server, probe):
    server.connect()
    software = Software().fetch(probe["id"])
    assert software.name == "MTDP-Probe" and software.executable
    # Software.parameters lists the parameters a user fills in (not the set-by-server ones).
    assert [p["name"] for p in software.parameters] == ["cytomine_id_terms", "threshold", "label", "fail", "crash"]
    everything = SoftwareParameterCollection(filters={"software": probe["id"]}, withSetByServer=True).fetch()
    assert len(everything) == 10 and [p.index for p in everything] == list(range(100, 1100, 100))
    threshold = next(p for p in everything if p.name == "threshold")
    assert threshold.defaultParamValue == "0.5" and threshold.type == "Number" and threshold.required is False
    host = next(p for p in everything if p.name == "cytomine_host")
    assert host.setByServer and host.valueKey == "CYTOMINE_HOST" and host.commandLineFlag == "--cytomine_host"
    user_visible = SoftwareParameterCollection(filters={"software": probe["id"]}).fetch()
    assert len(user_visible) == 5


def test_cytomine_job_lifecycle(server, seeded, probe, tmp_path):
    argv = _argv(server, probe["id"], seeded.project_id, "--label", "cells", "--threshold", "0.3", "--extra", "x")
    with CytomineJob.from_cli(argv, configure_logging=False) as cj:
        params = cj.parameters
        assert (params.label, params.threshold, params.fail, params.cytomine_id_terms) == ("cells", 0.3, False, "")
        # The client switched to the job user's own keys.
        assert cj.current_user.algo is True and cj.current_user.job == cj.job.id
        assert cj.current_user.publicKey != server.public_key
        job = server.store.jobs.get(cj.job.id)
        assert job["status"] == RUNNING
        values = {p["name"]: p["value"] for p in server.store.jobs.list_parameters(cj.job.id)}
        assert values["label"] == "cells" and values["threshold"] == "0.3" and values["fail"] == "false"

        seen = []
        for _ in cj.monitor(range(4), start=10, end=90, prefix="Step"):
            job = server.store.jobs.get(cj.job.id)
            seen.append((job["progress"], job["status_comment"]))
        assert seen == [(10, "Step (1/4)."), (30, "Step (2/4)."), (50, "Step (3/4)."), (70, "Step (4/4).")]

        # Job data round trip.
        data_file = tmp_path / "scores.csv"
        data_file.write_text("a,b\n1,2\n")
        data = JobData(cj.job.id, "scores", "scores.csv").save()
        assert data.upload(str(data_file))
        assert [d.key for d in JobDataCollection().fetch_with_filter("job", cj.job.id)] == ["scores"]
        assert JobData().fetch(data.id).download(str(tmp_path / "back.csv"))
        assert (tmp_path / "back.csv").read_text() == "a,b\n1,2\n"

        # Outputs of an app: a file and a property on the job, an algo annotation.
        model = tmp_path / "model.json"
        model.write_text('{"classes": [1, 2]}')
        assert AttachedFile(cj.job, filename=str(model)).upload().filename == "model.json"
        assert Property(cj.job, key="classes", value="1,2").save().value == "1,2"
        first = AnnotationCollection(project=seeded.project_id, showWKT=True).fetch()[0]
        created = Annotation(location=first.location, id_image=first.image).save()
        assert created.class_.endswith("AlgoAnnotation") and created.user == cj.current_user.id

    # The job ended: its keys (which the client still holds) no longer work (a 401, which the
    # client reports as False), except to read that job: how an app confirms its final status.
    assert Project().fetch(seeded.project_id) is False
    assert Job().fetch(cj.job.id).status == SUCCESS
    server.connect()
    job = Job().fetch(cj.job.id)
    assert job.status == SUCCESS and job.statusComment == "Job successfully terminated"
    # Another app (e.g. a predict app, with its own keys) reads the training job's outputs.
    files = AttachedFileCollection(job).fetch()
    assert [f.filename for f in files] == ["model.json"]
    assert files[0].download(str(tmp_path / "model-copy.json"), override=True)
    assert (tmp_path / "model-copy.json").read_text() == '{"classes": [1, 2]}'
    assert PropertyCollection(job).fetch().as_dict()["classes"].value == "1,2"
    # Job parameters are listed, keys masked.
    listed = {p.name: p.value for p in JobParameterCollection().fetch_with_filter("job", job.id)}
    assert listed["label"] == "cells"
    assert all("*" in p["value"] for p in job.jobParameters if "private_key" in p["name"])


def test_cytomine_job_failure_keeps_255_characters(server, seeded, probe):
    argv = _argv(server, probe["id"], seeded.project_id, "--label", "cells")
    with pytest.raises(ValueError), CytomineJob.from_cli(argv, configure_logging=False) as cj:
        raise ValueError("Bad parameter: " + "y" * 400)
    job = server.store.jobs.get(cj.job.id)
    assert job["status"] == FAILED
    assert job["status_comment"] == ("Bad parameter: " + "y" * 400)[:255]


def test_job_updates_are_validated(server, seeded, probe):
    job, user_job = server.store.jobs.create(seeded.project_id, probe["id"], server.admin)
    keys = (user_job["public_key"], user_job["private_key"])
    current = _raw(server, "GET", f"/api/job/{job['id']}.json", keys=keys).json()
    for change, message in [
        ({"progress": 150}, "progress"),
        ({"progress": -1}, "progress"),
        ({"status": 9}, "status"),
        ({"progress": "half"}, "progress"),
    ]:
        response = _raw(server, "PUT", f"/api/job/{job['id']}.json", {**current, **change}, keys=keys)
        assert response.status_code == 400 and message in response.json()["errors"]
    ok = _raw(
        server,
        "PUT",
        f"/api/job/{job['id']}.json",
        {**current, "status": 2, "progress": 42, "statusComment": "half way"},
        keys=keys,
    )
    assert ok.status_code == 200 and ok.json()["job"]["progress"] == 42
    # A job user can only update its own job.
    other, other_user = server.store.jobs.create(seeded.project_id, probe["id"], server.admin)
    response = _raw(server, "PUT", f"/api/job/{other['id']}.json", {**current, "id": other["id"]}, keys=keys)
    assert response.status_code == 403
    # A job user cannot launch jobs.
    assert (
        _raw(
            server, "POST", "/api/job.json", {"project": seeded.project_id, "software": probe["id"]}, keys=keys
        ).status_code
        == 403
    )
    assert other_user["id"] != user_job["id"]


def test_job_user_keys_are_visible_to_its_launcher_only(server, seeded, probe):
    job, user_job = server.store.jobs.create(seeded.project_id, probe["id"], server.admin)
    as_admin = _raw(server, "GET", f"/api/user/{user_job['id']}.json").json()
    assert as_admin["privateKey"] == user_job["private_key"] and as_admin["algo"] is True
    alice = server.store.users.create("alice")
    as_alice = _raw(server, "GET", f"/api/user/{user_job['id']}.json", keys=(alice["public_key"], alice["private_key"]))
    assert "privateKey" not in as_alice.json()
