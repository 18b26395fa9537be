"""The options of each ``mtdp server`` command (one function per command) and their descriptions."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mtdp_core.server.importers import FORMATS

SERVE = (
    "Run the server on a data folder (created when new) until Ctrl-C. Prints its URL and the admin "
    "keys (also written to DATA/admin-keys.json, readable by you only). Every request is logged."
)
IMPORT = (
    "Import images (a folder) and annotations (GeoJSON, CSV of boxes or WKT, Pascal VOC XML) into a "
    "project, created when new, with an ontology whose terms are the labels. Image coordinates "
    "(top-left origin) are converted to Cytomine's (bottom-left origin). Images already in the "
    "project are skipped, so an import can be re-run."
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


def import_(parser: argparse.ArgumentParser) -> None:
    data_folder(parser)
    parser.add_argument("images", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--project", required=True, help="project name (created when it does not exist)")
    parser.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="a .csv file, a .geojson file, or a folder of .geojson / VOC .xml files (default: none)",
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
        "--background",
        action="store_true",
        help="return once the job started (needs a running server: 'mtdp server serve')",
    )


def user_add(parser: argparse.ArgumentParser) -> None:
    data_folder(parser)
    parser.add_argument("username")
    parser.add_argument("--admin", action="store_true", help="make it an administrator")
    parser.add_argument("--email", default=None)
    parser.add_argument("--firstname", default=None)
    parser.add_argument("--lastname", default=None)
