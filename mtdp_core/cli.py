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
from collections.abc import Callable, Sequence

from mtdp_core import __version__
from mtdp_core.errors import MtdpError
from mtdp_core.logs import configure_logging

logger = logging.getLogger("mtdp")

# Every sub-command: the module whose ``register(subparsers)`` defines it (with the commands it
# shares a module with) and its one-line help, in the order `mtdp --help` lists them. Only the
# module of the command being run is imported: `mtdp --help` and `mtdp server ...` do not pay
# for importing torch. tests/test_cli.py checks these help lines against the modules'.
COMMANDS: dict[str, tuple[str, str]] = {
    "backbones": ("mtdp_core.backbones.cli", "list the registered backbones"),
    "weights": ("mtdp_core.backbones.cli", "list, locate, verify or fetch weights files"),
    "engine": (
        "mtdp_core.inference.cli",
        "inference engines: pre-export backbones to ONNX graphs, list, verify or clear them",
    ),
    "features": ("mtdp_core.transfer.cli", "extract features of a folder of images (cached, resumable)"),
    "probe": (
        "mtdp_core.transfer.cli",
        "train a linear SVM (or another probe) on features, with grouped cross-validation",
    ),
    "predict": ("mtdp_core.transfer.cli", "apply a saved model (probe or fine-tuned) to images"),
    "finetune": ("mtdp_core.transfer.cli", "fine-tune a backbone + new linear layer on a folder of class folders"),
    "slides": (
        "mtdp_core.slides.cli",
        "whole-slide images: info, tissue and tile preview, classify tiles with a saved model",
    ),
    "server": ("mtdp_core.server.cli", "the local Cytomine-compatible server (serve, import, launch apps)"),
    "appengine": (
        "mtdp_core.appengine.cli",
        "the apps as Cytomine App Engine tasks: descriptors, local runs, bundles",
    ),
    "pool": ("mtdp_core.data.cli", "build, describe or index a pool of tasks for multi-task pre-training"),
    "compare": (
        "mtdp_core.evaluation.cli",
        "compare backbones on tasks by feature extraction + SVM and/or fine-tuning",
    ),
    "report": ("mtdp_core.evaluation.cli", "comparison tables and plots from a scores CSV"),
}

#: The modules that define sub-commands, in order.
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))

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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mtdp`` parser; with ``command``, only that command's module is imported and its
    options are complete (the other commands are listed with their help only). Without it,
    every module is imported (documentation, tests)."""
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
    modules = COMMAND_MODULES if command is None else (COMMANDS[command][0],) if command in COMMANDS else ()
    for name, (module_name, help_text) in COMMANDS.items():
        if module_name in modules:
            if name not in subparsers.choices:
                importlib.import_module(module_name).register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is not an option or its value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-level":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv) or "")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_guarded(lambda: args.func(args))


def run_guarded(action: Callable[[], int | None], *, on_interrupt: str = "interrupted") -> int:
    """Run an entry point's work and turn its ending into an exit status (the ``mtdp`` command
    and the training scripts): 0 (or what ``action`` returns); 1 for an expected, user-fixable
    ``MtdpError``, logged as its message alone (the message says what to do; the traceback
    only at DEBUG); 130 on Ctrl-C, with ``on_interrupt`` saying how to go on."""
    try:
        return int(action() or 0)
    except MtdpError as exc:
        logger.error("%s", exc)
        logger.debug("details", exc_info=True)
        return 1
    except KeyboardInterrupt:
        logger.error("%s", on_interrupt)
        return 130
