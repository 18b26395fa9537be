"""The options of each ``mtdp server`` command (one function per command) and their descriptions."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from mtdp_core.server.config import PixelLimits
from mtdp_core.server.importers import FORMATS

SERVE = (
    "Run the server on a data folder (created when new) until Ctrl-C. Prints its URL and the admin "
    "keys (also written to DATA/admin-keys.json, readable by you only). Every request is logged."
)
IMPORT = (
    "Import images (a folder, or one file: plain images and whole-slide files OpenSlide reads, such as "
    "SVS, NDPI, MRXS, SCN or pyramidal TIFF) and annotations (GeoJSON such as QuPath's exports, CSV of "
    "boxes or WKT, Pascal VOC XML) into a project, created when new, with an ontology whose terms are the "
    "labels. Image coordinates (top-left origin) are converted to Cytomine's (bottom-left origin). Images "
    "already in the project are skipped, so an import can be re-run; unreadable files are skipped and listed."
)
REGISTER = (
    "Create the Software and its parameters from a cytomine-0.1 descriptor, as the Cytomine software "
    "router does (index order, value keys, flags, defaults, set-by-server parameters). Registering the "
    "same name and version again updates it."
)
LAUNCH = (
    "Create a job (with its own job user and keys) and its parameters, build the command line exactly "
    "as Cytomine does and run it: locally (the app's script) or in a container. Waits for the end and "
    "exits 0 when the job succeeded. Uses the server running on --data, or starts one meanwhile."
)


def seconds_or_none(text: str) -> float | None:
    """A positive number of seconds, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds, or 'none'")
    return value


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a positive ``kind`` (int or float)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r}: give a positive {'integer' if kind is int else 'number'}")
        return value

    return parse


def data_folder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=os.environ.get("MTDP_SERVER_DATA"),
        help="data folder: database, files, job logs (default: $MTDP_SERVER_DATA)",
    )


def serve(parser: argparse.ArgumentParser) -> None:
    data_folder(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: 0, a free port)")
    parser.add_argument(
        "--public-key",
        default=os.environ.get("MTDP_SERVER_PUBLIC_KEY"),
        help="admin public key to use (default: $MTDP_SERVER_PUBLIC_KEY, else kept or generated)",
    )
    parser.add_argument(
        "--private-key",
        default=os.environ.get("MTDP_SERVER_PRIVATE_KEY"),
        help="admin private key (default: $MTDP_SERVER_PRIVATE_KEY)",
    )
    parser.add_argument(
        "--public-url",
        default=None,
        help="base URL written in cropURL and given to jobs (default: the URL each request used)",
    )
    parser.add_argument(
        "--crop-max-size",
        default="256",
        help="longest side of a crop asked without maxSize: a number (256, the Spring core's default) "
        "or 'none' for full resolution (the Grails core's behaviour)",
    )
    parser.add_argument(
        "--max-clock-skew",
        type=seconds_or_none,
        default=900.0,
        metavar="SECONDS",
        help="refuse requests whose signed date is further than this from the server's clock (default: 900, "
        "15 minutes: a captured signature cannot be replayed later); 'none' disables the check",
    )
    limits = parser.add_argument_group("limits (what one request may cost; over them: a 400 or 413 naming the flag)")
    limits.add_argument(
        "--max-body-mb",
        type=positive(float),
        default=16,
        help="largest request body (JSON, forms), in MiB (default: 16)",
    )
    limits.add_argument(
        "--max-upload-mb",
        type=positive(float),
        default=1024,
        help="largest uploaded file (attached files, job data; streamed to disk), in MiB (default: 1024)",
    )
    limits.add_argument(
        "--max-pixels",
        type=positive(int),
        default=PixelLimits.max_pixels,
        help=f"largest image rendered for a request (crop, mask, window, thumbnail), in pixels "
        f"(default: {PixelLimits.max_pixels}, 4096 x 4096)",
    )
    limits.add_argument(
        "--max-upscale",
        type=positive(float),
        default=PixelLimits.max_upscale,
        help=f"how many times a crop or window may enlarge its region, per side (default: {PixelLimits.max_upscale:g})",
    )


def import_(parser: argparse.ArgumentParser) -> None:
    data_folder(parser)
    parser.add_argument(
        "images", type=Path, help="folder of images and slides (searched recursively), or one image or slide file"
    )
    parser.add_argument("--project", required=True, help="project name (created when it does not exist)")
    parser.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="a .csv file, a .geojson file, or a folder of .geojson (named after their image: slide.geojson for "
        "slide.svs; it may be the image folder itself) or VOC .xml files (default: none)",
    )
    parser.add_argument("--format", default="auto", choices=FORMATS, help="annotation format (default: from the files)")
    parser.add_argument("--image-column", default=None, help="CSV column / GeoJSON property naming the image")
    parser.add_argument("--label-column", default=None, help="CSV column / GeoJSON property holding the label")
    parser.add_argument("--geometry-column", default=None, help="CSV column holding a WKT geometry")
    parser.add_argument("--box-columns", default=None, help="CSV box columns, in the order xmin,ymin,xmax,ymax")
    parser.add_argument(
        "--copy", action="store_true", help="copy the images into the data folder (default: use them in place)"
    )
    parser.add_argument("--only-annotated", action="store_true", help="skip images without annotations")
    parser.add_argument("--limit", type=int, default=None, help="import only the first N images (by name)")
    parser.add_argument("--user", default="admin", help="owner of the images and annotations (default: admin)")


def register_app(parser: argparse.ArgumentParser) -> None:
    data_folder(parser)
    parser.add_argument("descriptor", type=Path, help="descriptors/<app>.json")
    parser.add_argument(
        "--local-command",
        default=None,
        help="command that replaces the container's executable when run locally, e.g. "
        '"python workflows/svm_train/run.py" (default: that script when it exists next to the '
        "descriptors folder)",
    )
    parser.add_argument("--version", default=None, help="software version (the image tag; default: none)")


def launch(parser: argparse.ArgumentParser) -> None:
    data_folder(parser)
    parser.add_argument("software", help="software name (or id)")
    parser.add_argument("--project", required=True, help="project name (or id)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter value (repeat for several); unset parameters take their default",
    )
    parser.add_argument(
        "--runner",
        choices=["local", "container"],
        default=None,
        help="local (default when the app has a local command) or container",
    )
    parser.add_argument("--image", default=None, help="container image (default: the descriptor's)")
    parser.add_argument(
        "--engine", default=None, help="container engine: podman or docker (default: whichever is installed)"
    )
    parser.add_argument("--timeout", type=float, default=None, help="kill the job after this many seconds")
    parser.add_argument(
        "--user",
        default="admin",
        help="who launches the job: an administrator or a member of the project (default: admin)",
    )
    parser.add_argument(
        "--background",
        action="store_true",
        help="return once the job started (needs a running server: 'mtdp server serve')",
    )


def user_add(parser: argparse.ArgumentParser) -> None:
    data_folder(parser)
    parser.add_argument("username")
    parser.add_argument("--admin", action="store_true", help="make it an administrator (it sees every project)")
    parser.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="P",
        help="make it a member of project P (name or id; repeat for several); an existing user is added to it",
    )
    parser.add_argument(
        "--manager", action="store_true", help="with --project: a manager (renames, deletes it, chooses its members)"
    )
    parser.add_argument("--email", default=None)
    parser.add_argument("--firstname", default=None)
    parser.add_argument("--lastname", default=None)
