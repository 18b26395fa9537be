"""run_app: one way to open a job, report progress, attach outputs and end SUCCESS or FAILED."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time

import pytest

from mtdp_core.cytomine.biaflows import add_biaflows_arguments
from mtdp_core.cytomine.errors import NoAnnotationsError
from mtdp_core.cytomine.inputs import add_connection_inputs
from mtdp_core.cytomine.job import LocalJob, Stage, run_app
from mtdp_core.cytomine.params import add_input, build_descriptor, integer, new_parser
from tests.helpers.faults import Fault, FaultProxy, server_address, subprocess_env

NOT_LAUNCH, RUNNING, SUCCESS, FAILED, KILLED = 0, 2, 3, 4, 8


def parser():
    p = new_parser("test_app", "A test app.")
    add_connection_inputs(p)
    add_input(
        p, "threshold", type="Number", name="Threshold", description="A number.", default=3, converter=integer(0, 10)
    )
    add_biaflows_arguments(p)
    return p


def connection_argv(host, server, seeded, software_id):
    return [
        "--cytomine_host",
        host,
        "--cytomine_public_key",
        server.public_key,
        "--cytomine_private_key",
        server.private_key,
        "--cytomine_id_project",
        str(seeded.project_id),
        "--cytomine_id_software",
        str(software_id),
    ]


@pytest.fixture
def software_id(server, tmp_path):
    path = tmp_path / "test_app.json"
    path.write_text(json.dumps(build_descriptor(parser(), name="MTDP-Test", description="t", image="mtdp/s_t")))
    return server.register_app(path)["id"]


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
    assert "Check the API keys (cytomine_public_key, cytomine_private_key)" in caplog.text
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


def test_unwritable_outfolder_says_what_to_do_without_traceback(tmp_path, monkeypatch, caplog):
    """A container user (uid 1000) on a root-owned bind mount: mkdir raises PermissionError."""
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    code = run_app(parser(), ["--local", "--outfolder", str(tmp_path / "out")], lambda job, args: "x", app="test_app")
    assert code == 1
    message = caplog.records[-1].getMessage()
    assert message.startswith("Make the output folder writable for uid ")
    assert "(Permission denied)" in message and 'docker run --user "$(id -u):$(id -g)"' in message
    assert "Traceback" not in caplog.text


def test_outfolder_that_exists_but_cannot_be_written(tmp_path, monkeypatch, caplog):
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "touch", refuse)  # mkdir(exist_ok=True) succeeds on a read-only folder
    assert run_app(parser(), ["--local", "--outfolder", str(tmp_path)], lambda job, args: "x", app="test_app") == 1
    assert caplog.records[-1].getMessage().startswith("Make the output folder writable")


def test_unwritable_outfolder_fails_the_cytomine_job(app, tmp_path):
    (tmp_path / "a-file").write_text("x")
    code, job = app(lambda job, args: "never", "--outfolder", str(tmp_path / "a-file" / "out"))
    assert code == 1 and job["status"] == FAILED
    comment = job["status_comment"]
    assert comment.startswith("Make the output folder writable") and "Not a directory" in comment


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


# --------------------------------------------------------------------------- faults and stops


@pytest.fixture
def faulty(server, seeded, software_id, tmp_path, monkeypatch):
    """Runs a pipeline in a job through a fault-injecting proxy; returns (exit code, job rows of the run)."""
    from mtdp_core.cytomine import client as client_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(client_module, "DEFAULT_BACKOFF", 0.01)
    with FaultProxy(server_address(server)) as proxy:

        def run(pipeline, faults, seed=0):
            before = {j["id"] for j in server.store.jobs.list(project=seeded.project_id)}
            proxy.set_faults(faults, seed=seed)
            argv = connection_argv(proxy.url, server, seeded, software_id)
            code = run_app(parser(), argv, pipeline, app="test_app")
            proxy.set_faults([])
            jobs = [j for j in server.store.jobs.list(project=seeded.project_id) if j["id"] not in before]
            return code, jobs

        run.proxy = proxy
        yield run


def _working(job, args):
    stage = job.stage("Working", 10, 50)
    for i in range(3):
        stage.update(i + 1, 3)
    job.set_property("threshold", args.threshold)
    path = job.workdir / "result.txt"
    path.write_text("ok")
    job.attach(path)
    return "All good"


def test_start_up_and_writes_survive_transient_failures(faulty, server):
    # Issue 11 item 9: at 20% transient 500s, most runs died while opening the job ("did not accept
    # the API keys", "project does not exist") and one was left NOT_LAUNCH.
    faults = [Fault("500", 0.2, path="^/api/"), Fault("reset", 0.05, path="^/api/")]
    for seed in range(4):
        code, jobs = faulty(_working, faults, seed=seed)
        assert code == 0 and len(jobs) == 1, (seed, code, [(j["status"], j["status_comment"]) for j in jobs])
        job = jobs[0]
        assert job["status"] == SUCCESS and job["status_comment"] == "All good"
        files = server.store.meta.list_attached_files("be.cytomine.processing.Job", job["id"])
        assert [f["filename"] for f in files] == ["result.txt"]
        assert {p["key"] for p in server.store.meta.list_properties("be.cytomine.processing.Job", job["id"])} == {
            "threshold"
        }
    assert sum(faulty.proxy.stats.faults.values()) > 10


def test_keys_are_blamed_only_for_a_401(faulty, caplog):
    code, jobs = faulty(_working, [Fault("500", 1.0, path="^/api/user/current.json$")])
    assert code == 1 and jobs == []
    assert "Re-run when the server works again" in caplog.text and "kept failing" in caplog.text
    assert "Check the API keys" not in caplog.text and "does not exist" not in caplog.text


def test_project_is_blamed_only_for_a_404(faulty, caplog):
    code, jobs = faulty(_working, [Fault("503", 1.0, path=r"^/api/project/\d+\.json$")])
    assert code == 1 and jobs == []
    assert "Re-run when the server works again" in caplog.text and "does not exist" not in caplog.text


def test_job_created_despite_a_gateway_timeout_is_used_not_created_again(faulty):
    # The job was created but the answer lost: the retry must not leave a NOT_LAUNCH twin behind.
    code, jobs = faulty(_working, [Fault("504_late", 1.0, methods=("POST",), path="^/api/job.json$")])
    assert code == 0 and [j["status"] for j in jobs] == [SUCCESS]


def _no_annotations(job, args):
    raise NoAnnotationsError("Annotate the project first: it has no annotations")


@pytest.mark.parametrize("pipeline, status, exit_code", [(_working, SUCCESS, 0), (_no_annotations, FAILED, 1)])
def test_a_final_status_applied_despite_a_late_504_is_confirmed(faulty, caplog, pipeline, status, exit_code):
    # The PUT of the final status is applied but its answer lost: the retry finds the job ended (its
    # keys refused); the app reads its job, sees the status applied, and does not report a failure.
    final = Fault(
        "504_late", 1.0, methods=("PUT",), path=r"^/api/job/\d+\.json$", body=rf'"status": ?{status}\b', times=1
    )
    code, jobs = faulty(pipeline, [final])
    assert faulty.proxy.stats.faults["504_late"] >= 1
    assert [j["status"] for j in jobs] == [status] and code == exit_code
    assert "the final status was applied by an earlier attempt" in caplog.text


def test_a_twin_created_by_a_late_request_is_ended_not_left_not_launched(faulty, monkeypatch):
    # The gateway answers 504 and passes the POST on a second later: the retry created the job
    # that runs, the late one must not stay NOT_LAUNCH.
    from mtdp_core.cytomine.job import JobOpening

    end_twins = JobOpening._end_twins

    def once_the_late_request_landed(self, user, job_id):
        faulty.proxy.settle()
        return end_twins(self, user, job_id)

    monkeypatch.setattr(JobOpening, "_end_twins", once_the_late_request_landed)
    late = Fault("504_early", 1.0, methods=("POST",), path="^/api/job.json$", delay=1.0, times=1)
    code, jobs = faulty(_working, [late])
    ran = [j for j in jobs if j["status"] == SUCCESS]
    assert code == 0 and len(ran) == 1
    assert [(j["status"], j["status_comment"]) for j in jobs if j is not ran[0]] == [
        (FAILED, f"Not run: created twice by a retried request; job {ran[0]['id']} ran instead.")
    ]


def test_a_job_that_cannot_start_is_not_left_behind(faulty):
    # The job exists but its job user cannot be read: it must end FAILED with the reason, not stay NOT_LAUNCH.
    code, jobs = faulty(_working, [Fault("reset", 1.0, methods=("GET",), path=r"^/api/user/\d+\.json$")])
    assert code == 1 and len(jobs) == 1
    assert jobs[0]["status"] == FAILED and jobs[0]["status_comment"].startswith("Re-run the job: it could not start")


def test_attachment_saved_despite_a_500_is_attached_once(faulty, server):
    faults = [Fault("500_late", 1.0, methods=("POST",), path="^/api/attachedfile.json$")]
    code, jobs = faulty(_working, faults)
    assert code == 0 and jobs[0]["status"] == SUCCESS
    files = server.store.meta.list_attached_files("be.cytomine.processing.Job", jobs[0]["id"])
    assert [f["filename"] for f in files] == ["result.txt"]


def test_system_exit_in_the_pipeline_fails_the_job(app):
    def leave(job, args):
        job.stage("Working", 10, 50)
        raise SystemExit(3)

    code, job = app(leave)
    assert code == 1 and job["status"] == FAILED
    assert job["status_comment"] == "Unexpected error, see the job log: SystemExit: 3"


@pytest.mark.parametrize(
    ("sig", "how", "exit_code"), [(signal.SIGTERM, "SIGTERM", 143), (signal.SIGINT, "Ctrl-C", 130)]
)
def test_a_stopped_job_ends_killed_with_how_to_resume(server, seeded, software_id, tmp_path, sig, how, exit_code):
    # Issue 11 item 7: Cytomine stops a job by signalling its process; SIGTERM left it RUNNING forever.
    argv = connection_argv(server.url, server, seeded, software_id)
    # A shell running the tests in the background (`cmd &`) starts them with SIGINT ignored, which the
    # app would inherit (Python then installs no Ctrl-C handler): start it as from a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.cytomine.slow_app", *argv], cwd=tmp_path, env=subprocess_env(), **_quiet()
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        job = _wait_for(lambda: _newest_running(server, seeded, min_progress=11))
        process.send_signal(sig)
        assert process.wait(60) == exit_code
    finally:
        process.kill()
    job = server.store.jobs.get(job["id"])
    assert job["status"] == KILLED, job["status_comment"]
    assert job["status_comment"].startswith("Re-run the job to finish it (what was saved is kept and not done twice)")
    assert f"stopped by {how} at " in job["status_comment"] and "during 'Working (" in job["status_comment"]


def _quiet():
    return {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "stdin": subprocess.DEVNULL}


def _newest_running(server, seeded, min_progress):
    jobs = server.store.jobs.list(project=seeded.project_id)
    job = max(jobs, key=lambda j: j["id"]) if jobs else None
    return job if job and job["status"] == RUNNING and job["progress"] >= min_progress else None


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_stop_message_says_where_the_job_was_even_between_updates(tmp_path):
    from mtdp_core.cytomine.biaflows import BiaflowsFlags
    from mtdp_core.cytomine.job import stopped_comment

    job = LocalJob(BiaflowsFlags(local=True, outfolder=tmp_path), "t")
    stage = job.stage("Pushing", 50, 100)
    stage.min_interval = 3600
    for i in range(10):
        stage.update(i + 1, 40)  # one update sent, the others throttled
    assert stopped_comment(job, "SIGTERM").endswith("stopped by SIGTERM at 62% during 'Pushing (10/40)'.")
