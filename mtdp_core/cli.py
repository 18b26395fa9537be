"""The ``mtdp`` command line.

Each sub-command lives next to the code it drives, in a module that exposes
``register(subparsers)``; this file only lists those modules, so adding a command is one
line here. A command handler takes the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from mtdp_core import __version__
from mtdp_core.errors import MtdpError
from mtdp_core.logs import configure_logging

logger = logging.getLogger("mtdp")

# Modules that define sub-commands, in the order `mtdp --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "mtdp_core.backbones.cli",
    "mtdp_core.transfer.cli",
    "mtdp_core.server.cli",
    "mtdp_core.data.cli",
)

DESCRIPTION = """\
mtdp: multi-task pre-training of deep neural networks for digital pathology.

Pre-train a CNN on a pool of small pathology tasks, transfer it to your own task by
feature extraction + linear SVM or by fine-tuning, and run the same steps as Cytomine /
BIAFLOWS apps. Weights are only ever read from local files (see `mtdp weights list`).
"""

EPILOG = """\
examples:
  mtdp backbones                            list architectures and their weight sources
  mtdp weights list                         where each weights file is expected, and if it is there
  mtdp features --backbone efficientnet_lite0 --weights imagenet IMAGE_DIR -o feats.npz

Run `mtdp COMMAND --help` for the options of a command. Set MTDP_LOG_LEVEL=DEBUG for more.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtdp",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mtdp {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: $MTDP_LOG_LEVEL or INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except MtdpError as exc:
        # Expected, user-fixable errors: the message says what to do; no traceback.
        logger.error("%s", exc)
        logger.debug("details", exc_info=True)
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
