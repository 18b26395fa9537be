"""``mtdp appengine``: list, descriptor, check, run (argument order kept), bundle."""

from __future__ import annotations

import pytest

from mtdp_core.appengine.tasks import list_tasks
from mtdp_core.cli import build_parser, main


def test_list_and_descriptor(capsys):
    assert main(["appengine", "list"]) == 0
    out = capsys.readouterr().out
    for name in list_tasks():
        assert f"descriptors/appengine/{name}/descriptor.yml" in out
    assert main(["appengine", "descriptor", "train"]) == 0
    assert "namespace: org.mtdp.train" in capsys.readouterr().out


def test_check_committed_descriptors_and_a_broken_one(tmp_path, capsys):
    assert main(["appengine", "check"]) == 0
    assert capsys.readouterr().out.count(": OK") == len(list_tasks())
    broken = tmp_path / "descriptor.yml"
    broken.write_text("name: x\n")
    assert main(["appengine", "check", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "name_short is missing" in out


def test_run_keeps_inputs_and_annotations_in_command_line_order():
    args = build_parser("appengine").parse_args(
        [
            "appengine",
            "run",
            "train",
            "--input",
            "images=@a.png",
            "--annotation",
            "images=@a.geojson",
            "--input",
            "images=@b.png",
            "--input",
            "labels=WBC",
        ]
    )
    assert args.entries == [
        ("input", "images", "@a.png"),
        ("annotation", "images", "@a.geojson"),
        ("input", "images", "@b.png"),
        ("input", "labels", "WBC"),
    ]
    with pytest.raises(SystemExit):
        build_parser("appengine").parse_args(["appengine", "run", "train", "--input", "no-equals-sign"])


def test_run_reports_an_input_mistake_with_exit_status_1(tmp_path, capsys, caplog):
    code = main(["appengine", "run", "classify", "--input", "size=3", "--output-dir", str(tmp_path / "run")])
    assert code == 1
    assert "has no input 'size'" in caplog.text


def test_bundle_without_engine_or_archive_fails_clearly(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["appengine", "bundle", "train", "--output-dir", str(tmp_path)]) == 1
    assert "Install podman or start Docker" in caplog.text
