"""run_app: one way to open a job, report progress, attach outputs and end SUCCESS or FAILED."""

from __future__ import annotations

import json
import logging
import re

import pytest

from mtdp_core.cytomine.biaflows import add_biaflows_arguments
from mtdp_core.cytomine.errors import NoAnnotationsError
from mtdp_core.cytomine.inputs import add_connection_inputs
from mtdp_core.cytomine.job import LocalJob, Stage, run_app
from mtdp_core.cytomine.params import add_input, build_descriptor, integer, new_parser

SUCCESS, FAILED = 3, 4


def parser():
    p = new_parser("test_app", "A test app.")
    add_connection_inputs(p)
    add_input(
        p, "threshold", type="Number", name="Threshold", description="A number.", default=3, converter=integer(0, 10)
    )
    add_biaflows_arguments(p)
    return p


@pytest.fixture
def app(server, seeded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "test_app.json"
    path.write_text(json.dumps(build_descriptor(parser(), name="MTDP-Test", description="t", image="mtdp/s_t")))
    software = server.register_app(path)
    argv = [
        "--cytomine_host",
        server.url,
        "--cytomine_public_key",
        server.public_key,
        "--cytomine_private_key",
        server.private_key,
        "--cytomine_id_project",
        str(seeded.project_id),
        "--cytomine_id_software",
        str(software["id"]),
    ]

    def run(pipeline, *extra):
        code = run_app(parser(), argv + list(extra), pipeline, app="test_app")
        job = max(server.store.jobs.list(project=seeded.project_id), key=lambda j: j["id"])
        return code, job

    return run


def test_success_reports_progress_outputs_and_properties(app, server, tmp_path):
    seen = {}

    def pipeline(job, args):
        stage = job.stage("Working", 10, 50)
        for i in range(5):
            stage.update(i + 1, 5)
        out = job.output_path("result.txt")
        out.write_text("hello")
        job.attach(out)
        job.set_property("threshold", args.threshold)
        job.set_property("threshold", 7)  # updated, not duplicated
        seen["user"] = job.session.client.current_user.algo
        return "All good"

    code, job = app(pipeline, "--threshold", "4")
    assert code == 0 and job["status"] == SUCCESS and job["progress"] == 100 and job["status_comment"] == "All good"
    assert seen["user"] is True  # the app works as the job user
    files = server.store.meta.list_attached_files("be.cytomine.processing.Job", job["id"])
    assert [f["filename"] for f in files] == ["result.txt"]
    props = {p["key"]: p["value"] for p in server.store.meta.list_properties("be.cytomine.processing.Job", job["id"])}
    assert props == {"threshold": "7"}
    params = {p["name"]: p["value"] for p in server.store.jobs.list_parameters(job["id"])}
    assert params["threshold"] == "4"  # recorded as a person's launch records them


def test_invalid_parameter_fails_the_job_with_a_fix_first_message(app):
    code, job = app(lambda job, args: "unreachable", "--threshold", "eleven")
    assert code == 1 and job["status"] == FAILED
    assert job["status_comment"] == "Set threshold to a whole number from 0 to 10 (got 'eleven')."


def test_mtdp_errors_and_crashes_fail_the_job(app):
    def no_annotations(job, args):
        raise NoAnnotationsError("Widen the filters: nothing matches. " + "x" * 400)

    code, job = app(no_annotations)
    assert code == 1 and job["status"] == FAILED
    assert job["status_comment"].startswith("Widen the filters") and len(job["status_comment"]) == 255

    def crash(job, args):
        raise KeyError("boom")

    code, job = app(crash)
    assert job["status"] == FAILED and job["status_comment"] == "Unexpected error, see the job log: KeyError: 'boom'"


def test_refused_keys_and_unknown_project_exit_1(server, seeded, caplog):
    argv = [
        "--cytomine_host",
        server.url,
        "--cytomine_public_key",
        server.public_key,
        "--cytomine_private_key",
        "wrong",
        "--cytomine_id_project",
        str(seeded.project_id),
        "--cytomine_id_software",
        "1",
    ]
    assert run_app(parser(), argv, lambda job, args: "x", app="test_app") == 1
    assert "Check the host and API keys" in caplog.text
    argv[5] = server.private_key
    argv[7] = "999999"
    assert run_app(parser(), argv, lambda job, args: "x", app="test_app") == 1
    assert "Check cytomine_id_project: project 999999 does not exist" in caplog.text


def test_missing_connection_parameters_exit_2(capsys):
    code = run_app(parser(), ["--threshold", "2"], lambda job, args: "x", app="test_app")
    assert code == 2


def test_local_mode_writes_outputs_and_properties(tmp_path):
    out = tmp_path / "out"

    def pipeline(job, args):
        assert job.local and job.session is None
        job.set_property("n", 3)
        path = job.output_path("a.txt")
        path.write_text("x")
        job.attach(path)
        return "local done"

    assert run_app(parser(), ["--local", "--outfolder", str(out)], pipeline, app="test_app") == 0
    assert json.loads((out / "properties.json").read_text()) == {"n": "3"}
    assert (out / "a.txt").read_text() == "x"


def progress_updates(caplog) -> list[tuple[int, str]]:
    """The progress updates a local job sent (it logs them: ``progress  NN%: comment``)."""
    found = [re.fullmatch(r"progress +(\d+)%: (.*)", r.getMessage()) for r in caplog.records]
    return [(int(m.group(1)), m.group(2)) for m in found if m]


def test_stage_throttles_updates(tmp_path, caplog):
    from mtdp_core.cytomine.biaflows import BiaflowsFlags

    job = LocalJob(BiaflowsFlags(local=True, outfolder=tmp_path), "t")
    with caplog.at_level(logging.INFO, logger="mtdp_core.cytomine.job"):
        stage = Stage(job, "Loop", 0, 100, min_interval=3600)
        for i in range(1000):
            stage.update(i + 1, 1000)
    assert progress_updates(caplog) == [(0, "Loop (1/1000)"), (99, "Loop (1000/1000)")]  # 100 only at the end


def test_stage_first_update_sent_on_a_freshly_booted_machine(tmp_path, monkeypatch, caplog):
    # time.monotonic() counts from boot: seconds after a start-up it is smaller than min_interval,
    # and the first update must still be sent (it was dropped when the last time started at 0.0).
    from mtdp_core.cytomine import job as job_module
    from mtdp_core.cytomine.biaflows import BiaflowsFlags

    monkeypatch.setattr(job_module.time, "monotonic", lambda: 5.0)
    job = LocalJob(BiaflowsFlags(local=True, outfolder=tmp_path), "t")
    with caplog.at_level(logging.INFO, logger="mtdp_core.cytomine.job"):
        Stage(job, "Loop", 0, 100, min_interval=3600).update(1, 10)
    assert progress_updates(caplog) == [(10, "Loop (1/10)")]


def test_properties_are_set_in_order_and_none_is_left_out(tmp_path):
    from mtdp_core.cytomine.biaflows import BiaflowsFlags

    job = LocalJob(BiaflowsFlags(local=True, outfolder=tmp_path), "t")
    job.set_properties({"classes": "a,b", "positive_terms": None, "n_images": 4})
    job.set_property("classes", "a,b,c")
    assert json.loads((tmp_path / "properties.json").read_text()) == {"classes": "a,b,c", "n_images": "4"}
    assert list(job.properties) == ["classes", "n_images"]
