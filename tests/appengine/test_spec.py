"""Task descriptors: generated from the shared parameter definitions, committed, valid against the
App Engine's schema (draft 2019-09) and against the rules its uploader applies outside the schema."""

from __future__ import annotations

import copy

import pytest

from mtdp_core.appengine.errors import DescriptorError
from mtdp_core.appengine.spec import (
    check_descriptor,
    descriptor_problems,
    descriptor_yaml,
    load_descriptor_text,
    rule_problems,
    schema_problems,
    task_descriptor,
)
from mtdp_core.appengine.tasks import all_tasks, get_task, list_tasks
from mtdp_core.cytomine.params import descriptor_inputs
from mtdp_core.errors import UnknownNameError
from tests.helpers.scripts import descriptors as write_descriptors

TASK_DIR, TASK_DOCS = write_descriptors.TASK_DIR, write_descriptors.TASK_DOCS
load_workflow, task_descriptor_texts, task_docs_text = (
    write_descriptors.load_workflow,
    write_descriptors.task_descriptor_texts,
    write_descriptors.task_docs_text,
)

TASKS = list_tasks()


def committed(name: str) -> dict:
    return load_descriptor_text((TASK_DIR / name / "descriptor.yml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", TASKS)
def test_committed_descriptor_is_valid(name):
    data = committed(name)
    assert schema_problems(data) == []
    assert rule_problems(data) == []
    assert data["namespace"] == f"org.mtdp.{name}" and "-" not in data["namespace"]
    assert data["configuration"]["input_folder"] == "/inputs"
    assert data["configuration"]["output_folder"] == "/outputs"
    for kind in ("inputs", "outputs"):
        for key, item in data[kind].items():
            assert item["display_name"] and item["description"], (kind, key)


@pytest.mark.parametrize("name", TASKS)
def test_committed_descriptor_is_generated(name):
    """The --check mode of scripts/write_descriptors.py, as CI runs it."""
    path = TASK_DIR / name / "descriptor.yml"
    assert path.read_text(encoding="utf-8") == task_descriptor_texts()[path], "run python scripts/write_descriptors.py"


def test_no_stale_descriptor_folders_and_docs_tables_are_current():
    assert sorted(p.name for p in TASK_DIR.iterdir() if p.is_dir()) == sorted(TASKS)
    assert TASK_DOCS.read_text(encoding="utf-8") == task_docs_text(), "run python scripts/write_descriptors.py"


def test_write_descriptors_check_mode_passes():
    assert write_descriptors.main(["--check"]) == 0


#: Task -> the legacy app whose parameter definitions it shares.
LEGACY = {
    "classify": "svm_predict",
    "train": "svm_train",
    "finetune": "finetune_predict",
    "extract_features": "extract_features",
}


@pytest.mark.parametrize("name", TASKS)
def test_parameters_are_the_legacy_apps_definitions(name):
    """One source of truth: every parameter of a task is declared by the legacy app it comes from,
    with the same name, description, bounds and default (where the app's default is not 'from the model')."""
    from mtdp_core.cytomine.inputs import add_slide_inputs
    from mtdp_core.cytomine.params import new_parser

    task = get_task(name)
    legacy = {s.id: s for s in descriptor_inputs(load_workflow(LEGACY[name]).get_args_parser())}
    # How a whole image is tiled: the shared declarations of the slide inputs (add_slide_inputs).
    slides = new_parser("slides", "")
    add_slide_inputs(slides)
    legacy.update({s.id: s for s in descriptor_inputs(slides)})
    for spec in descriptor_inputs(task.parser):
        assert spec.id in legacy, f"{name}.{spec.id} is not an input of {LEGACY[name]}"
        assert spec == legacy[spec.id], spec.id
    inputs = task_descriptor(task)["inputs"]
    for spec in descriptor_inputs(task.parser):
        item = inputs[spec.id]
        assert item["display_name"] == spec.name and item["description"] == spec.description
        if spec.default not in (None, ""):
            assert item["default"] == spec.default


def test_parameter_types_follow_the_converters():
    inputs = task_descriptor(get_task("train"))["inputs"]
    assert inputs["cv_folds"]["type"] == {"id": "integer", "geq": 2, "leq": 20} and inputs["cv_folds"]["default"] == 5
    assert inputs["balanced_classes"]["type"] == {"id": "boolean"} and inputs["balanced_classes"]["default"] is False
    assert inputs["device"]["type"] == {"id": "enumeration", "values": ["auto", "cpu", "cuda"]}
    assert (
        inputs["batch_size"]["type"] == {"id": "integer", "geq": 1, "leq": 4096}
        and "default" not in inputs["batch_size"]
    )
    assert all(item["optional"] for key, item in inputs.items() if key not in ("examples", "images", "labels"))
    finetune = task_descriptor(get_task("finetune"))["inputs"]
    assert finetune["val_fraction"]["type"] == {"id": "number", "geq": 0.05, "leq": 0.5}
    assert finetune["learning_rates"]["type"] == {"id": "string"}  # a list of numbers travels as its text
    classify = task_descriptor(get_task("classify"))["inputs"]
    assert classify["crop_max_size"]["type"] == {"id": "integer", "geq": 0, "leq": 4096}
    assert "default" not in classify["crop_max_size"]  # empty: the model's
    assert classify["image"]["type"] == "image"  # no formats, no size limit: whole slides arrive as they are


def test_no_input_a_task_cannot_honour():
    """Legacy-only inputs (server-set, Cytomine ids, downloads, pushes, context around annotations)
    are not task inputs."""
    for task in all_tasks():
        ids = set(task.input_ids())
        assert not ids & {"cytomine_host", "cytomine_id_project", "cytomine_id_images", "n_download_threads"}
        assert not ids & {"push_mode", "crop_increase_area", "cytomine_id_job"}


def test_classify_geometries_are_placed_on_the_input_and_match_their_classes():
    outputs = task_descriptor(get_task("classify"))["outputs"]
    assert outputs["geometries"]["dependencies"] == {
        "derived_from": "inputs/image",
        "matching": ["outputs/classes", "outputs/scores"],
    }


def test_yaml_round_trip_keeps_the_descriptor():
    for task in all_tasks():
        assert load_descriptor_text(descriptor_yaml(task)) == task_descriptor(task)


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(UnknownNameError, match="classify, train, finetune, extract_features"):
        get_task("segment")
    assert get_task("extract-features").name == "extract_features"


# --------------------------------------------------------------------------- the checks can fail


def _broken(change) -> dict:
    data = copy.deepcopy(committed("classify"))
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("name_short"), "name_short is missing"),
        (lambda d: d.update(namespace="org.mtdp.my-task"), "has a '-'"),
        (lambda d: d["configuration"].pop("output_folder"), "configuration.output_folder is missing"),
        (lambda d: d["inputs"]["model"].pop("display_name"), "inputs/model: display_name is missing"),
        (lambda d: d["outputs"]["geometries"]["dependencies"].pop("derived_from"), "without derived_from"),
        (lambda d: d["outputs"]["geometries"]["dependencies"].update(derived_from="inputs/nope"), "names no input"),
        (lambda d: d["outputs"]["geometries"]["dependencies"]["matching"].append("outputs/nope"), "names no input"),
        (lambda d: d["inputs"]["device"].update(default="tpu"), "not among the values"),
        (lambda d: d["inputs"]["batch_size"].update(default=0), "breaks geq 1"),
        (lambda d: d["inputs"]["model"].update(default="x"), "defaults are for scalars"),
    ],
)
def test_rules_catch_what_the_app_engine_would_choke_on(change, expected):
    problems = rule_problems(_broken(change))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(version="1.0"), "version"),
        (lambda d: d.update(name="ab"), "name"),
        (lambda d: d["inputs"].update({"bad-name": d["inputs"]["model"]}), "inputs"),
        (lambda d: d["inputs"]["device"]["type"].pop("values"), "inputs/device"),
        (lambda d: d["authors"][0].update(email="not an email"), "authors/0/email"),
    ],
)
def test_schema_catches_invalid_descriptors(change, expected):
    problems = schema_problems(_broken(change))
    assert problems and any(expected in p for p in problems), problems


def test_check_descriptor_raises_with_every_problem():
    data = _broken(lambda d: (d.pop("name_short"), d.update(namespace="a-b.c")))
    with pytest.raises(DescriptorError, match="name_short.*has a '-'"):
        check_descriptor(data)
    assert descriptor_problems(committed("train")) == []
