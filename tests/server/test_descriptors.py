"""Software from descriptors, as the Cytomine software router registers it."""

from __future__ import annotations

import json
import sys

import pytest

from mtdp_core.errors import ConfigurationError
from mtdp_core.server.descriptors import (
    default_local_command,
    load_descriptor,
    parse_descriptor,
    parse_local_command,
    register_software,
)
from mtdp_core.server.domain import CLASS_NAMES

BASE = {
    "name": "Demo",
    "schema-version": "cytomine-0.1",
    "command-line": "python run.py CYTOMINE_HOST [N_JOBS]",
    "container-image": {"image": "myorg/s_demo", "type": "singularity"},
    "inputs": [
        {
            "id": "cytomine_host",
            "value-key": "@ID",
            "command-line-flag": "--@id",
            "set-by-server": True,
            "type": "String",
        },
        {"id": "n_jobs", "type": "number", "optional": True, "default-value": 1, "description": "Use @id workers"},
    ],
}


def test_router_defaults_and_substitutions():
    spec = parse_descriptor(BASE)
    host, n_jobs = spec.parameters
    assert (host.value_key, host.command_line_flag, host.required, host.set_by_server) == (
        "CYTOMINE_HOST",
        "--cytomine_host",
        True,
        True,
    )
    # Defaults of the router: value-key [@ID], no flag, human name @id, type normalised, index 100, 200, ...
    assert (n_jobs.value_key, n_jobs.command_line_flag, n_jobs.human_name, n_jobs.type) == (
        "[N_JOBS]",
        "",
        "n_jobs",
        "Number",
    )
    assert (host.index, n_jobs.index) == (100, 200)
    assert n_jobs.default_value == "1" and n_jobs.required is False and n_jobs.description == "Use n_jobs workers"
    assert spec.image_name == "s_demo"
    assert spec.execute_command("v1.2") == "singularity run s_demo-v1.2.simg python run.py CYTOMINE_HOST [N_JOBS]"
    assert spec.pulling_command("v1.2") == "singularity pull --name s_demo-v1.2.simg docker://myorg/s_demo:v1.2"
    listdomain = parse_descriptor({**BASE, "inputs": [{"id": "terms", "type": "LISTDOMAIN"}]}).parameters[0]
    assert listdomain.type == "ListDomain"
    boolean = parse_descriptor({**BASE, "inputs": [{"id": "flag", "type": "Boolean", "default-value": False}]})
    assert boolean.parameters[0].default_value == "false"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": None}, "missing field"),
        ({"container-image": {"image": "x"}}, "container-image needs"),
        ({"schema-version": "boutiques-0.5"}, "not supported"),
        ({"inputs": [{"type": "String"}]}, "no 'id'"),
        ({"inputs": [{"id": "a"}]}, "no 'type'"),
        ({"inputs": [{"id": "a", "type": "Image"}]}, "has type 'Image'"),
        ({"inputs": [{"id": "a", "type": "String"}, {"id": "a", "type": "Number"}]}, "appears twice"),
    ],
)
def test_invalid_descriptors_are_explained(change, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_descriptor({**BASE, **change})


def test_register_updates_in_place_and_new_versions_deprecate(server):
    store = server.store
    first = register_software(store, parse_descriptor(BASE), version="v1")
    params = {p["name"]: p for p in store.software.list_parameters(first["id"])}
    assert params["n_jobs"]["default_value"] == "1"
    changed = {
        **BASE,
        "inputs": [
            BASE["inputs"][0],
            {"id": "n_jobs", "type": "Number", "default-value": 4},
            {"id": "seed", "type": "Number"},
        ],
    }
    again = register_software(store, parse_descriptor(changed), version="v1")
    assert again["id"] == first["id"]
    params = {p["name"]: p for p in store.software.list_parameters(first["id"])}
    assert params["n_jobs"]["default_value"] == "4" and "seed" in params
    newer = register_software(store, parse_descriptor(BASE), version="v2")
    assert newer["id"] != first["id"] and store.software.get(first["id"])["deprecated"] == 1
    assert store.software.find("Demo")["id"] == newer["id"]
    assert (
        store.meta.get_description(CLASS_NAMES["softwareparameter"], params["n_jobs"]["id"])["data"]
        == "Use n_jobs workers"
    )


def test_local_command_discovery(tmp_path):
    (tmp_path / "descriptors").mkdir()
    (tmp_path / "workflows" / "demo").mkdir(parents=True)
    descriptor = tmp_path / "descriptors" / "demo.json"
    descriptor.write_text(json.dumps(BASE))
    assert default_local_command(descriptor) is None
    (tmp_path / "workflows" / "demo" / "run.py").write_text("")
    assert default_local_command(descriptor) == [sys.executable, str(tmp_path / "workflows" / "demo" / "run.py")]
    command = parse_local_command("python workflows/demo/run.py --flag", cwd=tmp_path)
    assert command == [sys.executable, str(tmp_path / "workflows" / "demo" / "run.py"), "--flag"]
    assert load_descriptor(descriptor).name == "Demo"
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_descriptor(tmp_path / "missing.json")
