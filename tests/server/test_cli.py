"""``mtdp server ...``: serve, import, register-app, launch, user, info."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtdp_core.cli import main
from mtdp_core.server.app import read_admin_keys, read_server_file
from tests.helpers.paths import PROBE_APP

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _logging_to_the_captured_stderr():
    """main() configures logging once per process, on the stderr of the moment (pytest's capture):
    drop that handler after each test so that no later test logs to a closed capture."""
    yield
    import logging

    import mtdp_core.logs

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mtdp", False):
            root.removeHandler(handler)
    mtdp_core.logs._configured = False


@pytest.fixture
def dataset(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)).save(images / f"slide{k}.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(
        "filename,label,xmin,ymin,xmax,ymax\nslide0.png,tumour,5,5,25,20\nslide0.png,stroma,30,10,60,40\n"
        "slide1.png,tumour,1,1,11,11\n"
    )
    return images, boxes


def test_import_register_launch_info_and_users(tmp_path, dataset, capsys):
    data = tmp_path / "data"
    images, boxes = dataset
    assert (
        main(["server", "import", "--data", str(data), "--project", "demo", str(images), "--annotations", str(boxes)])
        == 0
    )
    out = capsys.readouterr().out
    assert "2 images added, 3 annotations, 2 new terms" in out and "tumour" in out

    assert main(["server", "register-app", "--data", str(data), str(PROBE_APP / "descriptors" / "probe.json")]) == 0
    out = capsys.readouterr().out
    assert "Software 'MTDP-Probe' registered" in out and "run.py" in out and "set by server" in out

    assert main(["server", "launch", "probe", "--data", str(data), "--project", "demo", "--param", "label=cli"]) == 0
    out = capsys.readouterr().out
    assert "SUCCESS (100%)" in out and "log.out" in out
    assert (
        main(
            [
                "server",
                "launch",
                "probe",
                "--data",
                str(data),
                "--project",
                "demo",
                "--param",
                "label=x",
                "--param",
                "fail=true",
            ]
        )
        == 1
    )
    assert "FAILED" in capsys.readouterr().out
    assert main(["server", "launch", "probe", "--data", str(data), "--project", "demo"]) == 1
    assert "Argument label is required" in capsys.readouterr().err
    # A member of the project launches too; someone else does not.
    assert main(["server", "user", "add", "carol", "--data", str(data), "--project", "demo"]) == 0
    assert main(["server", "user", "add", "dave", "--data", str(data)]) == 0
    capsys.readouterr()
    launch_as = ["server", "launch", "probe", "--data", str(data), "--project", "demo", "--param", "label=m"]
    assert main([*launch_as, "--user", "carol"]) == 0
    assert "SUCCESS (100%)" in capsys.readouterr().out
    assert main([*launch_as, "--user", "dave"]) == 1
    assert "not a member of project 'demo'" in capsys.readouterr().err

    assert main(["server", "user", "add", "alice", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "User 'alice'" in out and "private key:" in out
    assert main(["server", "user", "add", "alice", "--data", str(data)]) == 1
    assert main(["server", "user", "list", "--data", str(data)]) == 0
    assert "alice" in capsys.readouterr().out

    assert main(["server", "info", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "MTDP-Probe" in out and "SUCCESS" in out and "FAILED" in out


def test_data_folder_is_required(monkeypatch, capsys):
    monkeypatch.delenv("MTDP_SERVER_DATA", raising=False)
    assert main(["server", "info"]) == 1


def test_serve_prints_url_and_keys_then_launch_uses_it(tmp_path, dataset):
    data = tmp_path / "data"
    images, boxes = dataset
    assert (
        main(["server", "import", "--data", str(data), "--project", "demo", str(images), "--annotations", str(boxes)])
        == 0
    )
    assert main(["server", "register-app", "--data", str(data), str(PROBE_APP / "descriptors" / "probe.json")]) == 0
    assert main(["server", "user", "add", "alice", "--data", str(data), "--project", "demo"]) == 0
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MTDP_SERVER_PUBLIC_KEY": "my-public",
        "MTDP_SERVER_PRIVATE_KEY": "my-private",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "mtdp_core", "server", "serve", "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        first = process.stdout.readline()
        assert first.startswith("Local Cytomine server: http://127.0.0.1:")
        assert "my-public" in process.stdout.readline() and "my-private" in process.stdout.readline()
        url = first.split(": ", 1)[1].strip()
        deadline = time.monotonic() + 30
        while read_server_file(data) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read_server_file(data)["url"] == url
        assert read_admin_keys(data)["public_key"] == "my-public"
        # launch goes through the running server's HTTP API (job + parameters + execute), as the web UI,
        # with the keys of the user who launches: here a member of the project, not an administrator.
        launch = ["server", "launch", "probe", "--data", str(data), "--project", "demo", "--param", "label=ui"]
        assert main([*launch, "--user", "alice"]) == 0
        from cytomine import Cytomine
        from cytomine.models import JobCollection

        Cytomine(url, "my-public", "my-private", configure_logging=False)
        jobs = JobCollection(project=read_project_id(url)).fetch()
        assert [(j.status, j.username) for j in jobs] == [(3, "alice")]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert not (data / "server.json").exists()


def read_project_id(url: str) -> int:
    from cytomine.models import ProjectCollection

    return next(p.id for p in ProjectCollection().fetch() if p.name == "demo")


def test_help_texts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["server", "import", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "bottom-left" in out and "--box-columns" in out


def _ignore_and_block_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def test_serve_stops_on_sigint_even_when_started_with_sigint_ignored(tmp_path):
    """A script's background job (`mtdp server serve &`) starts with SIGINT ignored, and Python
    keeps it ignored unless the server installs its handler; a parent's blocked mask is
    inherited too: kill -INT must still stop it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mtdp_core", "server", "serve", "--data", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=_ignore_and_block_sigint,  # noqa: PLW1509 - the test needs the mask set in the child
    )
    try:
        assert process.stdout.readline().startswith("Local Cytomine server: http://127.0.0.1:")
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
