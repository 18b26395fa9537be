"""What a hostile user with valid keys can and cannot do to the local server (issue 11, items 1-6).

Each test reproduces one defect found on d00c835 (and failed there):
1. only the operator says what runs; 2. projects have members, a job's keys act in its project
until it ends; 3. signatures expire; 4. pixels and bodies are bounded; 5. secrets on disk are
readable by their owner only; 6. bad input is a 4xx that says what to change, with no server path
in any answer, and request paths are logged escaped.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import time
from email.utils import formatdate

import pytest
from cytomine.models import AttachedFile, Project, Software

from mtdp_core.server.domain import SUCCESS
from mtdp_core.server.testing import hostile_requests, running_server, signed_request


def _keys(user) -> tuple[str, str]:
    return user["public_key"], user["private_key"]


def _as(server, user, method, path, body=None, **kwargs):
    return signed_request(server.url, _keys(user), method, path, json_body=body, **kwargs)


def _admin(server, method, path, body=None, **kwargs):
    return _as(server, server.admin, method, path, body, **kwargs)


# ---------------------------------------------------------------------- 1. what runs
def test_1_only_the_operator_says_what_runs(server, seeded, probe_descriptor):
    registered = server.register_app(probe_descriptor)
    sid = registered["id"]
    alice = server.store.users.create("alice")
    evil = ["sh", "-c", "cat admin-keys.json"]
    # A non-administrator creates and changes no software, nor its parameters.
    assert _as(server, alice, "POST", "/api/software.json", {"name": "evil", "localCommand": evil}).status_code == 403
    assert _as(server, alice, "PUT", f"/api/software/{sid}.json", {"localCommand": evil}).status_code == 403
    assert _as(server, alice, "DELETE", f"/api/software/{sid}.json").status_code == 403
    parameter = {"software": sid, "name": "extra", "type": "String", "defaultValue": "--cytomine_host=evil"}
    assert _as(server, alice, "POST", "/api/software_parameter.json", parameter).status_code == 403
    # No HTTP request sets the command that runs, not even an administrator's: register-app does.
    for method, path in (("POST", "/api/software.json"), ("PUT", f"/api/software/{sid}.json")):
        answer = _admin(server, method, path, {"name": "evil", "localCommand": evil})
        assert answer.status_code == 400, answer.text
        assert "localCommand" in answer.json()["message"] and "register-app" in answer.json()["message"]
    assert server.store.software.get(sid)["local_command"] == registered["local_command"]
    assert [s["name"] for s in server.store.software.list()] == ["MTDP-Probe"]
    # What an administrator may change goes through, as the client's Software.update() sends it.
    server.connect()
    assert Software().fetch(sid).update(softwareVersion="2.0") is not False
    assert server.store.software.get(sid)["software_version"] == "2.0"


def test_1_job_parameter_values_cannot_add_arguments(server, seeded, probe_descriptor):
    # Cytomine splits the command line on spaces: a value "x --cytomine_host http://evil" posted over
    # HTTP would reach the app as extra arguments (sending the job's keys to another host).
    sid = server.register_app(probe_descriptor)["id"]
    params = {p["name"]: p["id"] for p in server.store.software.list_parameters(sid)}
    job = _admin(server, "POST", "/api/job.json", {"project": seeded.project_id, "software": sid}).json()["job"]
    injected = {"job": job["id"], "softwareParameter": params["label"], "value": "x --cytomine_host http://evil"}
    answer = _admin(server, "POST", "/api/jobparameter.json", injected)
    assert answer.status_code == 400, answer.text
    assert "space" in answer.json()["message"] and "label" in answer.json()["message"]
    wrong_type = {"job": job["id"], "softwareParameter": params["threshold"], "value": "0.5;rm"}
    assert _admin(server, "POST", "/api/jobparameter.json", wrong_type).status_code == 400
    assert server.store.jobs.list_parameters(job["id"]) == []
    # The same check when the parameters come with the job itself.
    body = {"project": seeded.project_id, "software": sid, "params": [injected | {"job": None}]}
    assert _admin(server, "POST", "/api/job.json", body).status_code == 400


# ---------------------------------------------------------------------- 2. who sees what
def test_2_non_members_get_403_and_see_nothing(server, seeded):
    store = server.store
    alice = store.users.create("alice")
    p, a, t, o = seeded.project_id, seeded.annotations[0].id, seeded.terms["tumour"], seeded.ontology_id
    image = seeded.images[0]["id"]
    software = store.software.create({"name": "predictor"})
    job, _ = store.jobs.create(p, software["id"], server.admin)
    store.meta.add_attached_file("be.cytomine.project.Project", p, "notes.txt", b"secret notes")
    refused = [
        ("GET", f"/api/project/{p}.json", None),
        ("PUT", f"/api/project/{p}.json", {"name": "mine"}),
        ("DELETE", f"/api/project/{p}.json", None),
        ("GET", f"/api/project/{p}/imageinstance.json", None),
        ("GET", f"/api/imageinstance/{image}.json", None),
        ("GET", f"/api/imageinstance/{image}/download", None),
        ("GET", f"/api/annotation.json?project={p}", None),
        ("GET", f"/api/annotation/{a}.json", None),
        ("PUT", f"/api/annotation/{a}.json", {"location": "POINT (5 5)"}),
        ("DELETE", f"/api/annotation/{a}.json", None),
        ("GET", f"/api/userannotation/{a}/crop.png", None),
        ("POST", "/api/annotation.json", {"image": image, "location": "POINT (5 5)"}),
        ("POST", f"/api/annotation/{a}/term/{t}.json", None),
        ("GET", f"/api/project/{p}/term.json", None),
        ("GET", f"/api/ontology/{o}.json", None),
        ("DELETE", f"/api/ontology/{o}.json", None),
        ("GET", f"/api/term/{t}.json", None),
        ("PUT", f"/api/term/{t}.json", {"name": "renamed"}),
        ("DELETE", f"/api/term/{t}.json", None),
        ("POST", "/api/term.json", {"name": "new", "ontology": o}),
        ("GET", f"/api/domain/be.cytomine.project.Project/{p}/attachedfile.json", None),
        ("GET", f"/api/project/{p}/property.json", None),
        ("GET", f"/api/job/{job['id']}.json", None),
        ("POST", f"/api/job/{job['id']}/execute.json", None),
        ("POST", f"/api/job/{job['id']}/kill.json", None),
        ("DELETE", f"/api/job/{job['id']}.json", None),
        ("POST", "/api/job.json", {"project": p, "software": software["id"]}),
        ("POST", f"/api/project/{p}/user/{alice['id']}.json", None),
    ]
    for method, path, body in refused:
        answer = _as(server, alice, method, path, body)
        assert answer.status_code == 403, f"{method} {path}: {answer.status_code} {answer.text[:200]}"
    assert "not a member of project" in _as(server, alice, "GET", f"/api/project/{p}.json").json()["message"]
    # A bulk creation refuses each item (HTTP 200 with the outcome in the body, as the core).
    bulk = _as(server, alice, "POST", "/api/annotation.json", [{"image": image, "location": "POINT (5 5)"}]).json()
    assert bulk["status"] == 400 and "not a member" in bulk["data"]["errors"][0]
    # Listings across projects show nothing of the project.
    for path in (
        "/api/project.json",
        "/api/annotation.json",
        f"/api/user/{alice['id']}/imageinstance.json",
        f"/api/user/{server.admin['id']}/project.json",
        "/api/ontology.json",
        "/api/term.json",
        "/api/job.json",
        "/api/abstractimage.json",
    ):
        answer = _as(server, alice, "GET", path)
        assert answer.status_code == 200 and answer.json()["size"] == 0, f"{path}: {answer.text[:200]}"
    assert len(store.annotations.list(store_query(p))[0]) == 8 and store.projects.get(p)["name"] == "synthetic"


def store_query(project_id):
    from mtdp_core.server.backends import AnnotationQuery

    return AnnotationQuery(project=project_id)


def test_2_members_managers_and_administrators(server, seeded):
    store = server.store
    alice, bob = store.users.create("alice"), store.users.create("bob")
    p, image = seeded.project_id, seeded.images[0]["id"]
    # The creator (here the admin, who made the seeded project) manages it: it adds a member.
    assert _admin(server, "POST", f"/api/project/{p}/user/{alice['id']}.json").status_code == 200
    assert _as(server, alice, "GET", f"/api/project/{p}.json").status_code == 200
    assert [x["id"] for x in _as(server, alice, "GET", "/api/project.json").json()["collection"]] == [p]
    created = _as(server, alice, "POST", "/api/annotation.json", {"image": image, "location": "POINT (5 5)"})
    assert created.status_code == 200
    members = {u["username"] for u in _as(server, alice, "GET", f"/api/project/{p}/user.json").json()["collection"]}
    managers = {u["username"] for u in _as(server, alice, "GET", f"/api/project/{p}/admin.json").json()["collection"]}
    assert members == {"admin", "alice"} and managers == {"admin"}
    # A member is not a manager: it neither renames the project nor adds members.
    assert _as(server, alice, "PUT", f"/api/project/{p}.json", {"name": "mine"}).status_code == 403
    assert _as(server, alice, "POST", f"/api/project/{p}/user/{bob['id']}.json").status_code == 403
    # Made a manager, it does both.
    assert _admin(server, "POST", f"/api/project/{p}/user/{alice['id']}/admin.json").status_code == 200
    assert _as(server, alice, "PUT", f"/api/project/{p}.json", {"name": "mine"}).status_code == 200
    assert _as(server, alice, "POST", f"/api/project/{p}/user/{bob['id']}.json").status_code == 200
    assert _as(server, bob, "GET", f"/api/project/{p}.json").status_code == 200
    assert _as(server, alice, "DELETE", f"/api/project/{p}/user/{bob['id']}.json").status_code == 200
    assert _as(server, bob, "GET", f"/api/project/{p}.json").status_code == 403
    # A project's creator is its manager; nobody else (but administrators) sees it.
    own = _as(server, bob, "POST", "/api/project.json", {"name": "bob's"}).json()["project"]
    assert [
        u["username"] for u in _as(server, bob, "GET", f"/api/project/{own['id']}/admin.json").json()["collection"]
    ] == ["bob"]
    assert _as(server, alice, "GET", f"/api/project/{own['id']}.json").status_code == 403
    assert _admin(server, "GET", f"/api/project/{own['id']}.json").status_code == 200
    # Its last manager cannot be removed (the project would be managed by administrators only).
    last = _admin(server, "DELETE", f"/api/project/{own['id']}/user/{bob['id']}.json")
    assert last.status_code == 400 and "last manager" in last.json()["message"]
    # Job users are not members.
    software = store.software.create({"name": "x"})
    _, job_user = store.jobs.create(p, software["id"], server.admin)
    assert _admin(server, "POST", f"/api/project/{p}/user/{job_user['id']}.json").status_code == 400


def test_2_job_keys_act_in_their_project_until_the_job_ends(server, seeded):
    store = server.store
    other = store.projects.create("other", seeded.ontology_id, server.admin["id"])
    software = store.software.create({"name": "predictor"})
    job, job_user = store.jobs.create(seeded.project_id, software["id"], server.admin)
    assert _as(server, job_user, "GET", f"/api/project/{seeded.project_id}.json").status_code == 200
    assert _as(server, job_user, "GET", f"/api/project/{other['id']}.json").status_code == 403
    assert _as(server, job_user, "GET", f"/api/annotation.json?project={other['id']}").status_code == 403
    assert [p["id"] for p in _as(server, job_user, "GET", "/api/project.json").json()["collection"]] == [
        seeded.project_id
    ]
    assert _as(server, job_user, "PUT", f"/api/job/{job['id']}.json", {"status": SUCCESS}).status_code == 200
    ended = _as(server, job_user, "GET", f"/api/project/{seeded.project_id}.json")
    assert ended.status_code == 401 and "ended" in ended.json()["message"]
    # Except to read that one job, so that an app whose final update lost its answer can confirm it.
    own = _as(server, job_user, "GET", f"/api/job/{job['id']}.json")
    assert own.status_code == 200 and own.json()["status"] == SUCCESS
    assert _as(server, job_user, "PUT", f"/api/job/{job['id']}.json", {"status": 2}).status_code == 401
    other_job, _ = store.jobs.create(seeded.project_id, software["id"], server.admin)
    assert _as(server, job_user, "GET", f"/api/job/{other_job['id']}.json").status_code == 401


def test_2_cli_user_add_to_a_project(tmp_path, capsys):
    from mtdp_core.cli import main
    from mtdp_core.server.backends import CytomineStore

    data = tmp_path / "data"
    with running_server(data) as srv:
        project = srv.store.projects.create("P", None, srv.admin["id"])["id"]
    assert main(["server", "user", "add", "alice", "--data", str(data), "--project", "P"]) == 0
    assert "private key:" in capsys.readouterr().out
    assert main(["server", "user", "add", "bob", "--data", str(data), "--project", "P", "--manager"]) == 0
    # An existing user is added to the project (its keys are not printed again).
    assert main(["server", "user", "add", "carol", "--data", str(data)]) == 0
    capsys.readouterr()
    assert main(["server", "user", "add", "carol", "--data", str(data), "--project", str(project)]) == 0
    assert "private key" not in capsys.readouterr().out
    assert main(["server", "user", "add", "dave", "--data", str(data), "--project", "nope"]) == 1
    store = CytomineStore(data / "cytomine.sqlite3", data / "files")
    try:
        roles = {m["username"]: m["manager"] for m in store.projects.members(project)}
    finally:
        store.close()
    assert roles == {"admin": True, "alice": False, "bob": True, "carol": False}


# ---------------------------------------------------------------------- 3. replay
def test_3_signatures_expire(server):
    path = "/api/user/current.json"
    assert _admin(server, "GET", path).status_code == 200
    for minutes in (-20, 20):
        stale = formatdate(time.time() + minutes * 60, usegmt=True)
        answer = _admin(server, "GET", path, date=stale)
        assert answer.status_code == 401 and "date" in answer.json()["message"], answer.text
    assert _admin(server, "GET", path, date=formatdate(time.time() - 14 * 60, usegmt=True)).status_code == 200
    missing = _admin(server, "GET", path, date="")
    assert missing.status_code == 401 and "date" in missing.json()["message"]
    assert _admin(server, "GET", path, date="yesterday").status_code == 401
    # The official client 3.0.0 signs a fresh date (4.x: tests/server/test_auth.py).
    assert server.connect().current_user.username == "admin"


def test_3_the_clock_skew_is_configurable():
    from mtdp_core.server.cli.arguments import seconds_or_none
    from mtdp_core.server.config import ServerConfig

    stale = formatdate(time.time() - 20 * 60, usegmt=True)
    with running_server(config=ServerConfig(log_requests=False, max_clock_skew=3600)) as srv:
        assert _admin(srv, "GET", "/api/user/current.json", date=stale).status_code == 200
    assert seconds_or_none("none") is None and seconds_or_none("60") == 60.0
    with pytest.raises(argparse.ArgumentTypeError):
        seconds_or_none("-1")


# ---------------------------------------------------------------------- 4. bounded pixels and bodies
def test_4_pixels_and_bodies_are_bounded(server, seeded):
    box = min(seeded.annotations, key=lambda a: (a.box[2] - a.box[0]) * (a.box[3] - a.box[1]))
    for request in hostile_requests(seeded.project_id, seeded.images[0]["id"], box.id):
        if request.item != 4:
            continue
        answer = request.send(server.url, _keys(server.admin))
        assert answer.status_code == request.expect, f"{request.what}: {answer.status_code} {answer.text[:300]}"
        assert request.says in answer.json()["message"], request.what


def test_4_limits_are_configurable_and_outputs_are_built_at_their_size(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from mtdp_core.server.cli import arguments
    from mtdp_core.server.cli.commands import serve_config
    from mtdp_core.server.config import PixelLimits, ServerConfig
    from mtdp_core.server.testing import seed_synthetic_project

    limits = PixelLimits(max_pixels=100 * 100, max_upscale=2)
    config = ServerConfig(
        log_requests=False, max_body_bytes=64 * 1024, max_upload_bytes=256 * 1024, pixel_limits=limits
    )
    with running_server(config=config) as srv:
        seeded = seed_synthetic_project(srv, tmp_path)
        image, pixels = seeded.images[0]["id"], seeded.pixels(seeded.images[0]["id"])
        window = f"/api/imageinstance/{image}/window"
        too_big = _admin(srv, "POST", "/api/annotation.json", data=b"x" * 100_000)
        assert too_big.status_code == 413 and "--max-body-mb" in too_big.json()["message"]
        attach = f"/api/attachedfile.json?domainClassName=be.cytomine.project.Project&domainIdent={seeded.project_id}"
        upload = _admin(srv, "POST", attach, files={"files[]": ("big.bin", b"x" * 300_000)})
        assert upload.status_code == 413 and "--max-upload-mb" in upload.json()["message"]
        assert _admin(srv, "POST", attach, files={"files[]": ("ok.bin", b"x" * 200_000)}).status_code == 200
        assert srv.store.meta.list_attached_files()[0]["size"] == 200_000
        enlarged = _admin(srv, "GET", f"{window}-0-0-20-20.png?maxSize=50")
        assert enlarged.status_code == 400 and "--max-upscale" in enlarged.json()["message"]
        too_many = _admin(srv, "GET", f"{window}-0-0-96-64.png?maxSize=150")  # 150 x 100 pixels, enlarged 1.6 times
        assert too_many.status_code == 400 and "--max-pixels" in too_many.json()["message"]
        # A window reaching outside the image, with exterior: black around the exact pixels.
        padded = _admin(srv, "GET", f"{window}--10--10-116-84.png?withExterior=true")
        array = np.asarray(Image.open(io.BytesIO(padded.content)).convert("RGB"))
        assert array.shape == (84, 116, 3) and not array[:10].any() and not array[:, :10].any()
        np.testing.assert_array_equal(array[10:74, 10:106], pixels)
        # A window far larger than the limit is fine when its output is small: it is built at that size.
        huge = _admin(srv, "GET", f"{window}--100000--100000-200096-200064.png?withExterior=true&maxSize=100")
        assert huge.status_code == 200 and Image.open(io.BytesIO(huge.content)).size == (100, 100)
    parser = argparse.ArgumentParser()
    arguments.serve(parser)
    args = parser.parse_args(
        ["--max-body-mb", "2", "--max-upload-mb", "8", "--max-pixels", "1000", "--max-upscale", "3"]
    )
    config = serve_config(args)
    assert (config.max_body_bytes, config.max_upload_bytes) == (2 << 20, 8 << 20)
    assert config.pixel_limits == PixelLimits(max_pixels=1000, max_upscale=3)
    assert serve_config(parser.parse_args([])).pixel_limits == PixelLimits()


# ---------------------------------------------------------------------- 5. secrets on disk
def test_5_secrets_on_disk_are_private(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        with running_server(data) as srv:
            project = srv.store.projects.create("p", None, srv.admin["id"])
            srv.connect()
            notes = tmp_path / "notes.txt"
            notes.write_text("notes")
            AttachedFile(Project().fetch(project["id"]), filename=str(notes)).upload()
            stored = srv.store.meta.list_attached_files()[0]["storage"]
            modes = {
                name: stat.S_IMODE(os.stat(path).st_mode)
                for name, path in {
                    "data folder": data,
                    "database": data / "cytomine.sqlite3",
                    "WAL": data / "cytomine.sqlite3-wal",
                    "SHM": data / "cytomine.sqlite3-shm",
                    "admin keys": data / "admin-keys.json",
                    "server file": data / "server.json",
                    "attached file": stored,
                }.items()
            }
    finally:
        os.umask(old)
    assert modes == {
        "data folder": 0o700,
        "database": 0o600,
        "WAL": 0o600,
        "SHM": 0o600,
        "admin keys": 0o600,
        "server file": 0o600,
        "attached file": 0o600,
    }
    # An existing data folder with readable files is tightened when opened.
    os.chmod(data, 0o755)
    os.chmod(data / "cytomine.sqlite3", 0o644)
    with running_server(data):
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(data / "cytomine.sqlite3").st_mode) == 0o600


# ---------------------------------------------------------------------- 6. bad input
def test_6_bad_input_is_a_4xx_that_says_what_to_change(server, seeded, tmp_path):
    box = seeded.annotations[0]
    secrets = [str(tmp_path), str(server.store.files.root)]
    for request in hostile_requests(seeded.project_id, seeded.images[0]["id"], box.id):
        if request.item != 6:
            continue
        answer = request.send(server.url, _keys(server.admin))
        assert answer.status_code == request.expect, f"{request.what}: {answer.status_code} {answer.text[:300]}"
        message = answer.json()["message"]
        assert request.says in message, f"{request.what}: {message}"
        assert not any(s in answer.text for s in secrets), f"{request.what}: {answer.text}"
    assert server.store.meta.list_attached_files() == []


def test_6_no_server_path_in_error_bodies(server, seeded, tmp_path, monkeypatch):
    secrets = [str(tmp_path), str(server.store.files.root)]
    # An image file gone from disk.
    seeded.image_paths[seeded.images[0]["id"]].unlink()
    answer = _admin(server, "GET", f"/api/userannotation/{seeded.annotations[0].id}/crop.png")
    assert answer.status_code == 404 and not any(s in answer.text for s in secrets), answer.text

    # An unexpected error: its text (which may name files) goes to the log, not to the caller.
    def broken(*args, **kwargs):
        raise OSError(f"[Errno 13] Permission denied: '{server.store.files.root}/x'")

    monkeypatch.setattr(server.store.projects, "list", broken)
    answer = _admin(server, "GET", "/api/project.json")
    assert answer.status_code == 500 and not any(s in answer.text for s in secrets), answer.text


def test_6_download_names_with_cr_lf_are_sent_safely(server, seeded):
    # A name stored before names were checked (or by the operator's import): never a raw header.
    row = server.store.meta.add_attached_file("be.cytomine.project.Project", seeded.project_id, "notes.txt", b"x")
    with server.store.db.transaction() as db:
        db.execute("UPDATE attached_file SET filename = ? WHERE id = ?", ("evil\r\nSet-Cookie: a=b.txt", row["id"]))
    answer = _admin(server, "GET", f"/api/attachedfile/{row['id']}/download")
    assert answer.status_code == 200 and answer.content == b"x"
    assert "Set-Cookie" not in answer.headers and "\n" not in answer.headers["Content-Disposition"]


def test_6_logged_request_paths_are_escaped(caplog):
    import requests

    from mtdp_core.server.config import ServerConfig

    with (
        caplog.at_level(logging.INFO, "mtdp_core.server.requests"),
        running_server(config=ServerConfig(log_requests=True)) as srv,
    ):
        requests.get(srv.url + "/api/project.json%0D%0A127.0.0.1 GET /api/forged 200 admin", timeout=10)
    lines = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert lines and all("\n" not in line and "\r" not in line for line in lines), lines
