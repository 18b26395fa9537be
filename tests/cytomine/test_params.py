"""App parameters: typing, fix-first messages, descriptors built from parsers."""

from __future__ import annotations

import argparse

import pytest

from mtdp_core.cytomine.errors import ParameterError
from mtdp_core.cytomine.params import (
    add_input,
    boolean,
    build_descriptor,
    descriptor_inputs,
    descriptor_values,
    id_list,
    integer,
    new_parser,
    positive_number_list,
)


def make_parser():
    parser = new_parser("app", "An app.")
    add_input(
        parser,
        "cytomine_id_images",
        type="ListDomain",
        name="Images",
        description="Images.",
        default="",
        uri="/api/project/$currentProject$/imageinstance.json",
        uri_print_attribute="instanceFilename",
        uri_sort_attribute="instanceFilename",
    )
    add_input(
        parser,
        "batch_size",
        type="Number",
        name="Batch",
        description="Batch size.",
        default=32,
        converter=integer(1, 512),
    )
    add_input(parser, "flag", type="Boolean", name="Flag", description="A flag.", default=False)
    add_input(
        parser, "mode", type="String", name="Mode", description="Mode.", default="term", choices=("term", "annotation")
    )
    parser.add_argument("--local", action="store_true")
    return parser


def test_values_are_typed_from_cytomine_text():
    args, unknown = make_parser().parse_app_args(
        [
            "--cytomine_id_images",
            "12,13",
            "--batch_size",
            "64.0",
            "--flag",
            "True",
            "--mode",
            "annotation",
            "[CYTOMINE_ID_USERS]",
            "python",
            "/app/run.py",
        ]
    )
    assert args.cytomine_id_images == (12, 13)
    assert args.batch_size == 64
    assert args.flag is True
    assert args.mode == "annotation"
    assert unknown == ["[CYTOMINE_ID_USERS]", "python", "/app/run.py"]  # placeholders and container prefix ignored


def test_defaults_are_converted():
    args, _ = make_parser().parse_app_args([])
    assert args.cytomine_id_images == ()
    assert args.batch_size == 32 and args.flag is False and args.mode == "term"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--batch_size", "abc"], "Set batch_size to a whole number from 1 to 512 (got 'abc')."),
        (["--batch_size", "0"], "Set batch_size to a whole number from 1 to 512 (got '0')."),
        (["--flag", "maybe"], "Set flag to true or false (got 'maybe')."),
        (["--mode", "polygon"], "Set mode to one of term, annotation (got 'polygon')."),
        (
            ["--cytomine_id_images", "1,x"],
            "Set cytomine_id_images to a comma-separated list of ids, e.g. 12,13 (got '1,x').",
        ),
        (["--batch_size"], "Give batch_size a value"),
    ],
)
def test_invalid_values_raise_fix_first_messages(argv, expected):
    with pytest.raises(ParameterError) as info:
        make_parser().parse_app_args(argv)
    assert str(info.value).startswith(expected)
    assert len(str(info.value)) <= 255


def test_converters():
    assert id_list("[3, 4,4]") == (3, 4)
    assert boolean("YES") is True and boolean("0") is False
    assert positive_number_list("0.001,1e-4") == (0.001, 0.0001)
    with pytest.raises(argparse.ArgumentTypeError):
        positive_number_list("0.1,-1")
    with pytest.raises(argparse.ArgumentTypeError):
        integer(0)("1.5")


def test_descriptor_is_built_from_the_parser():
    parser = make_parser()
    descriptor = build_descriptor(parser, name="App", description="An app.", image="mtdp/s_app")
    assert descriptor["command-line"] == "python /app/run.py [CYTOMINE_ID_IMAGES] [BATCH_SIZE] [FLAG] [MODE]"
    by_id = {i["id"]: i for i in descriptor["inputs"]}
    assert set(by_id) == {"cytomine_id_images", "batch_size", "flag", "mode"}  # --local is not an input
    assert by_id["batch_size"]["default-value"] == 32 and by_id["flag"]["default-value"] is False
    assert by_id["mode"]["values-choice"] == ["term", "annotation"]
    assert by_id["cytomine_id_images"]["uri"].endswith("/imageinstance.json")
    assert [s.id for s in descriptor_inputs(parser)] == list(by_id)


def test_descriptor_values_are_cytomine_text():
    parser = make_parser()
    args, _ = parser.parse_app_args(["--cytomine_id_images", "5,6", "--flag", "true"])
    values = vars(descriptor_values(args, parser))
    assert values == {"cytomine_id_images": "5,6", "batch_size": 32, "flag": "true", "mode": "term"}
