"""scripts/container_smoke.py: what it sets up by itself, and what it stops on with the fix.
(Building and running the images is the script's own job: minutes and GBs.)"""

from __future__ import annotations

import os
import stat
import sys
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


# --------------------------------------------------------------------------- the torch-free variant


def test_the_smoke_covers_every_app_that_has_a_torch_free_image(smoke):
    """Every frozen-backbone app (an engine input) is built and run in both variants."""
    from tests.test_docker import apps, stages

    frozen = {app for app, inputs in apps().items() if "engine" in inputs}
    assert set(smoke.APPS) == frozen and smoke.APPS[0] == "svm_train"  # the others use its model
    found = stages()
    for app in smoke.APPS:
        assert smoke.target(app, "torch") in found and smoke.target(app, "torch-free") in found
        assert smoke.image_name(app, "smoke", "torch-free") == smoke.image_name(app, "smoke") + "-cpu"


def test_variants_and_apps_are_chosen_by_name_and_run_in_order(smoke):
    args = smoke.get_args_parser().parse_args(["--variants", "torch-free,torch", "--apps", "svm_predict,svm_train"])
    assert args.variants == ["torch", "torch-free"] and args.apps == ["svm_train", "svm_predict"]
    with pytest.raises(SystemExit):
        smoke.get_args_parser().parse_args(["--variants", "onnx"])


def test_job_parameters_are_the_apps_defaults_with_their_images(smoke):
    assert smoke.job_parameters("svm_train", [1, 2], [3], [1, 2, 3], None) == {
        "cytomine_id_images": [1, 2],
        "balanced_classes": True,
    }
    assert smoke.job_parameters("svm_predict", [1, 2], [3], [1, 2, 3], 7) == {
        "cytomine_id_job": 7,
        "cytomine_id_images": [3],
    }
    slide = smoke.job_parameters("slide_classify", [1, 2], [3], [1, 2, 3], 7)
    assert slide["cytomine_id_job"] == 7 and slide["slide_mpp"] == 1.0 and "image_size" not in slide
    # Every parameter is an input of the app's descriptor (slide-classify's tile_mpp became resolution).
    from tests.test_docker import apps

    for app in smoke.APPS:
        assert set(smoke.job_parameters(app, [1, 2], [3], [1, 2, 3], 7)) <= apps()[app], app


GOOD_TORCH_FREE = {
    "torch_importable": False,
    "gpu_libraries": [],
    "auto": "onnxruntime",
    "torch_engine": "MissingDependencyError: Engine torch needs torch, which is not installed here: use engine "
    "onnxruntime (with a pre-exported graph, see `mtdp engine export`) or install torch==2.14.1",
    "graphs": ["efficientnet_lite0 imagenet 224 px"],
    "graphs_verified": True,
    "verify": "",
    "uid": "1000",
    "home_not_owned": [],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"torch_importable": True}, "has torch"),
        ({"gpu_libraries": ["nvidia-cublas"]}, "a GPU library"),
        ({"auto": "torch"}, "engine auto is not onnxruntime"),
        ({"torch_engine": "RuntimeError: no"}, "engine torch should fail with its fix"),
        ({"graphs": []}, "image's graphs do not pass `mtdp engine verify`"),
        ({"graphs_verified": False}, "image's graphs do not pass `mtdp engine verify`"),
        ({"home_not_owned": ["/home/app/.cache"]}, "uid 1000 owning its home"),
    ],
)
def test_a_torch_free_image_that_breaks_its_promise_fails_the_smoke(smoke, change, message):
    smoke.check_inspection("torch-free", "cuda", GOOD_TORCH_FREE)
    with pytest.raises(smoke.SmokeError, match=message):
        smoke.check_inspection("torch-free", "cuda", {**GOOD_TORCH_FREE, **change})


def test_a_torch_image_is_checked_for_its_build(smoke):
    good = {
        "torch": "2.14.1+cu130",
        "cuda": "13.0",
        "gpu_libraries": 19,
        "graphs": ["efficientnet_lite0 imagenet 224 px"],
        "graphs_verified": True,
        "verify": "",
        "uid": "1000",
        "home_not_owned": [],
    }
    smoke.check_inspection("torch", "cuda", good)
    with pytest.raises(smoke.SmokeError, match="The torch image's graphs do not pass"):
        smoke.check_inspection("torch", "cuda", {**good, "graphs": []})  # every CPU job would export them
    with pytest.raises(smoke.SmokeError, match="has a CUDA torch build"):
        smoke.check_inspection("torch", "cpu", good)
    with pytest.raises(smoke.SmokeError, match="no CUDA torch build"):
        smoke.check_inspection("torch", "cuda", {**good, "cuda": None})


def test_the_graphs_of_an_image_are_read_from_mtdp_engine_verify(smoke, tmp_path, monkeypatch, capfd):
    """The smoke parses `mtdp engine verify`'s log: the real one, so that a change there shows here."""
    from mtdp_core.cli import main

    assert main(["engine", "export", "resnet18", "random", "--size", "32", "--dir", str(tmp_path)]) == 0
    monkeypatch.setenv("MTDP_GRAPH_DIR", str(tmp_path))
    capfd.readouterr()
    assert main(["engine", "verify", "--require"]) == 0
    assert smoke.verified_graphs(capfd.readouterr().err) == ["resnet18 random 32 px"]


FAKE_APP = """\
import json, os, sys
args = sys.argv[1:]
if args[:2] != ["run", "--rm"]:
    sys.exit(0)
host = next(a.split(":")[0] for a in args if a.endswith(":/data"))
out = args[args.index("--outfolder") + 1].replace("/data", host)
if "--engine" in args:
    sys.exit(print(ENGINE_TORCH, file=sys.stderr) or 1)
if "--image_size" in args:
    sys.exit(print("FAILED: No exported graph of efficientnet_lite0 (imagenet weights) at 64 px", file=sys.stderr) or 1)
if "--user" not in args and "--userns=keep-id" not in args:
    sys.exit(print("FAILED: Make the output folder writable for uid 1000", file=sys.stderr) or 1)
os.makedirs(out, exist_ok=True)
json.dump({"classes": ["RBC"]}, open(os.path.join(out, "properties.json"), "w"))
print("INFO device: CPU (2 threads, no torch); engine: " + ENGINE, file=sys.stderr)
if EXPORTS:
    print("INFO mtdp_core.inference.graphs: exported efficientnet_lite0 at 224 px", file=sys.stderr)
"""


def fake_app_engine(tmp_path: Path, engine: str, engine_torch: str, exports: bool = False) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    podman = bin_dir / "podman"
    header = f"#!{sys.executable}\nENGINE = {engine!r}\nENGINE_TORCH = {engine_torch!r}\nEXPORTS = {exports}\n"
    podman.write_text(header + FAKE_APP)
    podman.chmod(podman.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_local_mode_of_a_torch_free_image_runs_onnxruntime_and_refuses_torch(smoke, tmp_path, monkeypatch):
    args = smoke.get_args_parser().parse_args(["--images", "1"])
    refusal = (
        "FAILED: Set device to auto or cpu and engine to auto: Engine torch needs torch, which is not installed here"
    )
    monkeypatch.setenv("PATH", fake_app_engine(tmp_path, "onnxruntime", refusal))
    result = smoke.local_mode(args, tmp_path / "data", "torch-free")
    assert result["runs"].endswith("engine: onnxruntime") and result["engine_torch"] == refusal
    monkeypatch.setenv("PATH", fake_app_engine(tmp_path, "torch", refusal))
    with pytest.raises(smoke.SmokeError, match="did not run with onnxruntime"):
        smoke.local_mode(args, tmp_path / "data2", "torch-free")
    monkeypatch.setenv("PATH", fake_app_engine(tmp_path, "onnxruntime", "Traceback (most recent call last): ..."))
    with pytest.raises(smoke.SmokeError, match="should fail saying 'Engine torch needs torch"):
        smoke.local_mode(args, tmp_path / "data3", "torch-free")
    monkeypatch.setenv("PATH", fake_app_engine(tmp_path, "onnxruntime", refusal, exports=True))
    with pytest.raises(smoke.SmokeError, match="The torch svm-train exported a graph at job time"):
        smoke.local_mode(args, tmp_path / "data4", "torch")


def test_the_summary_puts_sizes_and_job_times_side_by_side(smoke):
    results = {
        "build": {"torch": {"svm_train": {"size_gb": 6.54}}, "torch-free": {"svm_train": {"size_gb": 0.81}}},
        "jobs": {
            "torch": {"svm_train": {"seconds": 63.2, "status": 3}},
            "torch-free": {"svm_train": {"seconds": 20.4, "status": 4}},
        },
    }
    assert smoke.summary(results).splitlines() == [
        "| app | torch image | torch job | torch-free image | torch-free job |",
        "|---|---:|---:|---:|---:|",
        "| svm_train | 6.54 GB | 63 s | 0.81 GB | 20 s (FAILED) |",
    ]


def test_jobs_alternate_the_variants_and_keep_the_median(smoke, tmp_path, monkeypatch):
    """Each app runs --repeat times in each variant, interleaved; predict uses the first training job."""
    launched = []
    times = iter([10.0, 30.0, 50.0, 20.0, 12.0, 24.0] + [0.0] * 20)
    clock = {"now": 0.0}

    class FakeServer:
        def __init__(self, data_dir):
            self.store = type(
                "S",
                (),
                {
                    "images": type(
                        "I",
                        (),
                        {"list": lambda self, p: [{"id": i, "original_filename": f"{i}.jpg"} for i in range(1, 9)]},
                    )()
                },
            )()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def register_app(self, path):
            return {}

        def launch(self, app, project, parameters, **kwargs):
            clock["now"] += next(times)
            launched.append((app, kwargs["image"], parameters.get("cytomine_id_job")))
            return {"id": len(launched), "status": 3, "status_comment": "ok"}

    monkeypatch.setattr("mtdp_core.server.LocalCytomine", FakeServer)
    monkeypatch.setattr(
        "mtdp_core.server.importers.import_folder", lambda *a, **k: type("R", (), {"project": {"id": 1}})()
    )
    monkeypatch.setattr(smoke.time, "perf_counter", lambda: clock["now"])
    args = smoke.get_args_parser().parse_args(["--apps", "svm_train,svm_predict", "--repeat", "3"])
    results = smoke.smoke(args, tmp_path)
    assert [image.rsplit(":", 1)[1] for _, image, _ in launched[:6]] == ["smoke", "smoke-cpu"] * 3
    assert results["torch"]["svm_train"]["runs"] == [10.0, 50.0, 12.0]
    assert results["torch"]["svm_train"]["seconds"] == 12.0 and results["torch-free"]["svm_train"]["seconds"] == 24.0
    assert {model for app, _, model in launched if app == "svm_predict"} == {1, 2}  # each variant's first job
