"""Launching jobs: the command line exactly as Cytomine builds it, and runs end to end."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest

from mtdp_core.server.backends import AnnotationQuery
from mtdp_core.server.descriptors import parse_descriptor, register_software
from mtdp_core.server.domain import FAILED, KILLED, SUCCESS, TERMINAL_STATUSES
from mtdp_core.server.errors import BadRequest
from mtdp_core.server.launcher import cytomine_command, failure_message, java_split
from tests.server.test_routes import _raw


def _software(server, command_line, inputs, **kw):
    spec = parse_descriptor(
        {
            "name": "T",
            "command-line": command_line,
            "inputs": inputs,
            "container-image": {"image": "org/s_t", "type": "singularity"},
        }
    )
    return register_software(server.store, spec, **kw)


def _job(server, seeded, software, values=None):
    store = server.store
    by_name = {p["name"]: p["id"] for p in store.software.list_parameters(software["id"])}
    job, _ = store.jobs.create(
        seeded.project_id, software["id"], server.admin, [(by_name[k], v) for k, v in (values or {}).items()]
    )
    server.launcher.init_job(job, server.url)
    return job


SET_BY_SERVER = [
    {"id": "cytomine_host", "value-key": "@ID", "command-line-flag": "--@id", "set-by-server": True, "type": "String"},
    {
        "id": "cytomine_public_key",
        "value-key": "@ID",
        "command-line-flag": "--@id",
        "set-by-server": True,
        "type": "String",
    },
    {
        "id": "cytomine_private_key",
        "value-key": "@ID",
        "command-line-flag": "--@id",
        "set-by-server": True,
        "type": "String",
    },
    {
        "id": "cytomine_id_project",
        "value-key": "@ID",
        "command-line-flag": "--@id",
        "set-by-server": True,
        "type": "Number",
    },
    {
        "id": "cytomine_id_software",
        "value-key": "@ID",
        "command-line-flag": "--@id",
        "set-by-server": True,
        "type": "Number",
    },
]


def test_command_line_exactly_as_cytomine(server, seeded):
    software = _software(
        server,
        "python run.py CYTOMINE_HOST CYTOMINE_PUBLIC_KEY CYTOMINE_PRIVATE_KEY CYTOMINE_ID_PROJECT CYTOMINE_ID_SOFTWARE "
        "[NETWORK] [TERMS] [N_JOBS] WORKING_DIRECTORY",
        SET_BY_SERVER
        + [
            {"id": "network", "type": "String", "default-value": "densenet121", "command-line-flag": "--@id"},
            {"id": "terms", "type": "ListDomain", "optional": True, "default-value": "", "command-line-flag": "--@id"},
            {"id": "n_jobs", "type": "Number", "optional": True, "default-value": 1},
        ],
        version="v1.0",
    )
    job = _job(server, seeded, software, {"network": "resnet50"})
    user_job = server.store.users.job_user(job["id"])
    assert cytomine_command(server.store, job) == [
        "singularity",
        "run",
        "s_t-v1.0.simg",
        "python",
        "run.py",
        "--cytomine_host",
        server.url,
        "--cytomine_public_key",
        user_job["public_key"],
        "--cytomine_private_key",
        user_job["private_key"],
        "--cytomine_id_project",
        str(seeded.project_id),
        "--cytomine_id_software",
        str(software["id"]),
        "--network",
        "resnet50",  # the job's value
        "[TERMS]",  # empty optional value: the placeholder stays, literally
        "1",  # default, no flag: the bare value
        "WORKING_DIRECTORY",  # no input has this key: left as is
    ]


def test_value_keys_are_regexes_substituted_in_index_order(server, seeded):
    # As in the core, a key that is a prefix of another clobbers it when substituted first.
    software = _software(
        server,
        "run IMAGES IMAGE",
        [
            {"id": "image", "value-key": "IMAGE", "type": "Number"},
            {"id": "images", "value-key": "IMAGES", "type": "String"},
        ],
    )
    job = _job(server, seeded, software, {"image": 5, "images": "1,2"})
    assert cytomine_command(server.store, job)[3:] == ["run", "5S", "5"]


def test_required_values_and_java_split(server, seeded):
    software = _software(
        server, "run  [A] [B]", [{"id": "a", "type": "String"}, {"id": "b", "type": "String", "optional": True}]
    )
    job = _job(server, seeded, software)
    with pytest.raises(BadRequest, match="Argument a is required"):
        cytomine_command(server.store, job)
    assert java_split("a  b c  ") == ["a", "", "b", "c"]


def test_runners(server, seeded):
    software = _software(
        server,
        "python /app/run.py CYTOMINE_HOST [N]",
        [SET_BY_SERVER[0], {"id": "n", "type": "Number", "default-value": 3, "command-line-flag": "--@id"}],
        local_command=["/usr/bin/python3", "/src/workflows/t/run.py"],
    )
    job = _job(server, seeded, software)
    assert server.launcher.process_argv(job) == [
        "/usr/bin/python3",
        "/src/workflows/t/run.py",
        "--cytomine_host",
        server.url,
        "--n",
        "3",
    ]
    assert server.launcher.process_argv(job, runner="container", engine="podman") == [
        "podman",
        "run",
        "--rm",
        "--network",
        "host",
        "org/s_t",
        "python",
        "/app/run.py",
        "--cytomine_host",
        server.url,
        "--n",
        "3",
    ]
    assert (
        server.launcher.process_argv(job, runner="container", engine="docker", image="local/t:dev")[5] == "local/t:dev"
    )


def test_launch_probe_app_end_to_end(server, seeded, probe_descriptor, caplog):
    caplog.set_level(logging.INFO)
    server.register_app(probe_descriptor)
    tumour = seeded.terms["tumour"]
    job = server.launch(
        "probe", "synthetic", {"label": "hello", "threshold": 0.25, "cytomine_id_terms": [tumour]}, timeout=120
    )
    assert job["status"] == SUCCESS, job["status_comment"]
    assert job["progress"] == 100
    store = server.store
    files = {f["filename"]: f for f in store.meta.list_attached_files("be.cytomine.processing.Job", job["id"])}
    assert set(files) == {"result.json", "log.out"}
    result = json.loads(open(files["result.json"]["storage"]).read())
    assert result["label"] == "hello" and result["threshold"] == 0.25 and result["user_is_job"] is True
    assert result["n_annotations"] == 4 and result["n_crops"] == 4  # filtered by the ListDomain term parameter
    assert "--cytomine_id_terms" in result["argv"] and str(tumour) in result["argv"]
    assert "probe done: 4 annotations" in open(files["log.out"]["storage"]).read()
    assert store.meta.find_property("be.cytomine.processing.Job", job["id"], "n_annotations")["value"] == "4"
    job_user = store.users.job_user(job["id"])
    algo, _ = store.annotations.list(AnnotationQuery(kind="algo", project=seeded.project_id))
    assert len(algo) == 1 and algo[0]["user_id"] == job_user["id"]
    suggestions = _raw(
        server, "GET", f"/api/annotation.json?project={seeded.project_id}&showAlgo=true&jobForTermAlgo={job['id']}"
    ).json()["collection"]
    assert [s["rate"] for s in suggestions] == [0.75]
    assert [d["filename"] for d in store.jobs.list_data(job["id"])] == ["summary.txt"]
    # The command line is logged, with the job user's private key masked.
    assert "--cytomine_private_key *****" in caplog.text and job_user["private_key"] not in caplog.text


def test_empty_optional_placeholder_reaches_the_app_literally(server, seeded, probe_descriptor):
    server.register_app(probe_descriptor)
    job = server.launch("MTDP-Probe", seeded.project_id, {"label": "x"}, timeout=120)
    assert job["status"] == SUCCESS, job["status_comment"]
    result = next(
        f
        for f in server.store.meta.list_attached_files("be.cytomine.processing.Job", job["id"])
        if f["filename"] == "result.json"
    )
    argv = json.loads(open(result["storage"]).read())["argv"]
    assert "[CYTOMINE_ID_TERMS]" in argv and "--threshold" in argv and "0.5" in argv


def test_failures_inside_and_before_the_job(server, seeded, probe_descriptor):
    server.register_app(probe_descriptor)
    failed = server.launch("probe", seeded.project_id, {"label": "x", "fail": True}, timeout=120)
    assert failed["status"] == FAILED
    assert failed["status_comment"].startswith("Probe failure requested: xxx") and len(failed["status_comment"]) == 255
    crashed = server.launch("probe", seeded.project_id, {"label": "x", "crash": "true"}, timeout=120)
    assert crashed["status"] == FAILED
    assert crashed["status_comment"] == "Exit code 1: RuntimeError: crash requested before the job started"
    log = next(
        f
        for f in server.store.meta.list_attached_files("be.cytomine.processing.Job", crashed["id"])
        if f["filename"] == "log.out"
    )
    assert "about to crash" in open(log["storage"]).read()


def test_bad_launch_parameters_are_refused_before_running(server, seeded, probe_descriptor):
    server.register_app(probe_descriptor)
    for params, message in [
        ({"label": "x", "nope": 1}, "Unknown parameter 'nope'"),
        ({"label": "x", "threshold": "high"}, "Invalid value 'high'"),
        ({"label": "two words"}, "contains a space"),
        ({"label": "x", "cytomine_host": "h"}, "set by the server"),
        ({}, "Argument label is required"),
    ]:
        with pytest.raises(BadRequest, match=message):
            server.launch("probe", seeded.project_id, params)


def test_timeout_kills_the_job(server, seeded):
    software = _software(
        server,
        "sleep [SECONDS]",
        [{"id": "seconds", "type": "Number", "default-value": 30}],
        local_command=[sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))"],
    )
    start = time.monotonic()
    job = server.launch(software["id"], seeded.project_id, timeout=0.5)
    assert job["status"] == KILLED and "timed out" in job["status_comment"]
    assert time.monotonic() - start < 20


def test_launch_over_http_like_the_web_ui(server, seeded, probe_descriptor):
    software = server.register_app(probe_descriptor)
    params = {p["name"]: p["id"] for p in server.store.software.list_parameters(software["id"])}
    created = _raw(
        server,
        "POST",
        "/api/job.json",
        {
            "project": seeded.project_id,
            "software": software["id"],
            "params": [{"softwareParameter": params["label"], "value": "ui"}],
        },
    ).json()["job"]
    assert created["status"] == 0 and created["userJob"]
    started = _raw(server, "POST", f"/api/job/{created['id']}/execute.json", {}).json()["job"]
    assert started["status"] in (1, 2, 3)
    deadline = time.monotonic() + 120
    job = started
    while job["status"] not in TERMINAL_STATUSES and time.monotonic() < deadline:
        time.sleep(0.2)
        job = _raw(server, "GET", f"/api/job/{created['id']}.json").json()
    assert job["status"] == SUCCESS, job["statusComment"]
    # Launching the same job twice is refused.
    assert _raw(server, "POST", f"/api/job/{created['id']}/execute.json", {}).status_code == 400


def test_failure_message_picks_the_error_line():
    log = 'step 1\nTraceback (most recent call last):\n  File "x", line 1\nValueError: bad value\n'
    assert failure_message(1, log) == "Exit code 1: ValueError: bad value"
    assert failure_message(2, "usage: x\nx: error: missing --a\n") == "Exit code 2: x: error: missing --a"
    assert len(failure_message(1, "E" * 1000)) == 255


def test_failure_message_names_the_signal_that_ended_the_process():
    # A process ended by a signal has a negative code: "Exit code -9" told nobody what happened.
    message = failure_message(-9, "INFO extracting features (3/40)\n")
    assert message.startswith("Killed by SIGKILL (the system may have run out of memory")
    assert message.endswith("last log line: INFO extracting features (3/40)")
    assert failure_message(-15, "").startswith("Killed by SIGTERM (stopped from outside the server")
    assert len(failure_message(-9, "E" * 1000)) == 255
