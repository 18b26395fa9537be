"""``mtdp appengine list | descriptor | check | run | bundle``: the App Engine tasks on this machine.

mtdp appengine list                                   the tasks, their images and descriptors
mtdp appengine descriptor classify                    print a task's generated descriptor.yml
mtdp appengine check [DESCRIPTOR.yml|BUNDLE.zip ...]  check them as the App Engine would
mtdp appengine run classify --input model=@model.npz --input image=@cells.jpg --annotation image=@cell.geojson
mtdp appengine bundle classify                        build the uploadable zip (podman or docker)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

EPILOG_RUN = """\
inputs (as the App Engine provisions them):
  --input NAME=TEXT            a value (number, true/false, text); repeat NAME for an array
  --input NAME=@FILE           a file, an image (a whole image or slide), or a value read from FILE
  --annotation NAME=@GEOJSON   cut the image given just before to this annotation, as Cytomine does:
                               NAME becomes its PNG crop and NAME.geojson its geometry (a GeoJSON
                               geometry, Feature or FeatureCollection, or WKT, in image pixels with
                               the origin at the top-left, as QuPath exports; one item per feature
                               for an array input)

examples:
  mtdp appengine run train --input examples=@cells.zip --input backbone=efficientnet_lite0
  mtdp appengine run train --input images=@a.png --input labels=WBC --input images=@b.png --input labels=RBC
  mtdp appengine run classify --input model=@mtdp-out/appengine/train-.../outputs/model \\
      --input image=@BloodImage_00003.jpg --annotation image='POLYGON ((127 40, 344 40, 344 226, 127 226, 127 40))'
  mtdp appengine run classify --engine podman --input model=@model --input image=@slide.svs

The run folder (--output-dir, default mtdp-out/appengine/TASK-DATE) holds inputs/ and outputs/ as
the App Engine has them, task.log, run.json and results.geojson (geometry outputs back in image
coordinates, with their classes: open it in QuPath). Exit status 0 when the run is FINISHED.
"""


class _Ordered(argparse.Action):
    """``--input`` and ``--annotation`` into one list, in command-line order (an annotation
    applies to the image given just before it)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        text = str(values)
        name, sep, value = text.partition("=")
        if not sep or not name:
            parser.error(f"{option_string} takes NAME=VALUE, got {text!r}")
        entries = getattr(namespace, "entries", None) or []
        entries.append(("annotation" if option_string == "--annotation" else "input", name.strip(), value))
        namespace.entries = entries


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "appengine",
        help="the apps as Cytomine App Engine tasks: descriptors, local runs, bundles",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="appengine_command", metavar="SUBCOMMAND", required=True)

    q = sub.add_parser("list", help="the tasks, their images and descriptors")
    q.set_defaults(func=_cmd_list)

    q = sub.add_parser("descriptor", help="print a task's descriptor.yml (generated from its definition)")
    q.add_argument("task")
    q.add_argument("-o", "--output", type=Path, default=None, help="write it to this file instead")
    q.set_defaults(func=_cmd_descriptor)

    q = sub.add_parser(
        "check",
        help="check descriptors or bundles as the App Engine would (default: the committed descriptors)",
    )
    q.add_argument("paths", nargs="*", type=Path, help="descriptor.yml files or bundle .zip files")
    q.set_defaults(func=_cmd_check)

    q = sub.add_parser(
        "run",
        help="run a task as the App Engine would: provision inputs, run, check outputs, show results",
        epilog=EPILOG_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("task")
    q.add_argument("--input", action=_Ordered, metavar="NAME=VALUE", help="an input (see below); repeatable")
    q.add_argument("--annotation", action=_Ordered, metavar="NAME=GEOMETRY", help="cut the last image of NAME")
    q.add_argument(
        "--engine",
        default="python",
        choices=("python", "podman", "docker"),
        help="python: the entrypoint in a subprocess of this Python (default); podman/docker: the task's "
        "container, /inputs and /outputs mounted",
    )
    q.add_argument("--image", default=None, help="container image (default: the task's, e.g. org/mtdp/classify:VER)")
    q.add_argument("--gpus", action="store_true", help="give the container the GPUs")
    q.add_argument("--output-dir", type=Path, default=None, help="run folder (default: mtdp-out/appengine/TASK-DATE)")
    q.set_defaults(func=_cmd_run, entries=None)

    q = sub.add_parser(
        "bundle",
        help="build the zip to upload to Cytomine: descriptor.yml + the image saved as <namespace>-<version>.tar",
    )
    q.add_argument("task")
    q.add_argument("--output-dir", type=Path, default=Path("dist"), help="where the zip goes (default: dist/)")
    q.add_argument("--engine", default=None, choices=("podman", "docker"), help="default: podman, else docker")
    q.add_argument(
        "--image-tar",
        type=Path,
        default=None,
        help="bundle this `docker save` archive instead of building (e.g. built on another machine)",
    )
    q.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE", help="passed to the build")
    q.add_argument(
        "--context",
        type=Path,
        default=None,
        help="the build context with the Dockerfile (default: this mtdp checkout, else the current directory)",
    )
    q.set_defaults(func=_cmd_bundle)


def _cmd_list(args: argparse.Namespace) -> int:
    from mtdp_core.appengine.tasks import all_tasks

    for task in all_tasks():
        legacy = f", legacy app {task.legacy_app}" if task.legacy_app else ""
        print(f"{task.name:18} {task.title:24} image {task.image_name}{legacy}")
        print(f"{'':18} descriptors/appengine/{task.name}/descriptor.yml, entrypoint {' '.join(task.entrypoint)}")
    return 0


def _cmd_descriptor(args: argparse.Namespace) -> int:
    from mtdp_core.appengine.spec import descriptor_yaml
    from mtdp_core.appengine.tasks import get_task

    text = descriptor_yaml(get_task(args.task))
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from mtdp_core.appengine.bundle import bundle_problems
    from mtdp_core.appengine.spec import descriptor_problems, load_descriptor_text

    paths = list(args.paths)
    if not paths:
        root = Path(__file__).resolve().parents[2] / "descriptors" / "appengine"
        paths = sorted(root.glob("*/descriptor.yml"))
        if not paths:
            print(f"no descriptor under {root}: give descriptor.yml or bundle files", file=sys.stderr)
            return 2
    failed = 0
    for path in paths:
        if path.suffix == ".zip":
            problems = bundle_problems(path).problems
        else:
            try:
                problems = descriptor_problems(load_descriptor_text(path.read_text(encoding="utf-8")))
            except Exception as exc:  # noqa: BLE001 - reported as this file's problem
                problems = [str(exc)]
        print(f"{path}: {'OK' if not problems else 'FAILED'}")
        for problem in problems:
            print(f"  - {problem}")
        failed += bool(problems)
    return 1 if failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mtdp_core.appengine.local import format_result, run_local
    from mtdp_core.appengine.spec import task_descriptor
    from mtdp_core.appengine.tasks import get_task

    task = get_task(args.task)
    result = run_local(
        task,
        args.entries or [],
        folder=args.output_dir,
        engine=args.engine,
        image=args.image,
        gpus=args.gpus,
    )
    print(format_result(result, task_descriptor(task)))
    return 0 if result.ok else 1


def _cmd_bundle(args: argparse.Namespace) -> int:
    from mtdp_core.appengine.bundle import bundle, describe_bundle
    from mtdp_core.appengine.tasks import get_task

    zip_path, report = bundle(
        get_task(args.task),
        output_dir=args.output_dir,
        engine=args.engine,
        image_tar=args.image_tar,
        context=args.context,
        build_args=args.build_arg,
    )
    print(describe_bundle(zip_path, report))
    return 0
