"""scripts/container_smoke.py: what it sets up by itself, and what it stops on with the fix.
(Building and running the images is the script's own job: minutes and GBs.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.helpers.scripts import load_script


@pytest.fixture
def smoke():
    return load_script("scripts/container_smoke.py")


@pytest.fixture
def no_containers_conf(monkeypatch):
    """CONTAINERS_CONF unset, and unset again afterwards (the script exports it)."""
    monkeypatch.setenv("CONTAINERS_CONF", "")
    monkeypatch.delenv("CONTAINERS_CONF")


def fake_engine(tmp_path: Path, script: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    engine = bin_dir / "podman"
    engine.write_text("#!/bin/sh\n" + script)
    engine.chmod(engine.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"  # the fake first, then sh, grep...


def test_no_engine_stops_at_once_with_the_install_line(smoke, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert smoke.main(["--engine", "podman"]) == 1
    err = capsys.readouterr().err
    assert "No podman on PATH: install podman: apt-get install -y podman buildah runc" in err


@pytest.mark.usefixtures("no_containers_conf")
def test_podman_that_cannot_set_rlimits_gets_the_scripts_containers_conf(smoke, tmp_path, monkeypatch):
    """Without the config every `podman run` failed, after a 4-minute build."""
    script = (
        '[ -n "$CONTAINERS_CONF" ] && grep -q default_ulimits "$CONTAINERS_CONF" && exit 0\n'
        'echo "Error: runc create failed: error setting rlimit type 7: operation not permitted" >&2; exit 126\n'
    )
    monkeypatch.setenv("PATH", fake_engine(tmp_path, script))
    conf = smoke.ensure_runtime("podman", tmp_path)
    assert conf == str(tmp_path / "containers.conf")
    text = Path(conf).read_text()
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]' in text and 'runtime = "runc"' in text


@pytest.mark.usefixtures("no_containers_conf")
def test_podman_that_cannot_run_at_all_says_what_to_install(smoke, tmp_path, monkeypatch):
    script = 'echo "Error: default OCI runtime not found" >&2; exit 125\n'
    monkeypatch.setenv("PATH", fake_engine(tmp_path, script))
    with pytest.raises(smoke.SmokeError, match=r"Make `podman run` work: .*runtime not found.*apt-get install -y runc"):
        smoke.ensure_runtime("podman", tmp_path)


def test_base_image_that_cannot_be_pulled_needs_root_and_debootstrap(smoke, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_engine(tmp_path, "exit 1\n"))  # no image, no pull
    monkeypatch.setattr(smoke.os, "geteuid", lambda: 1000)
    with pytest.raises(smoke.SmokeError, match="Make docker.io/library/python:3.11-slim available: .*debootstrap"):
        smoke.ensure_base("podman", remake=False, mirror=None)


def test_local_mode_class_folders_from_the_bccd_sample(smoke, tmp_path):
    n = smoke.make_class_folders(tmp_path / "in", 2)
    folders = sorted(p.name for p in (tmp_path / "in").iterdir())
    assert n == sum(len(list((tmp_path / "in" / f).glob("*.png"))) for f in folders) and n > 0
    assert set(folders) <= {"RBC", "WBC", "Platelets"}
