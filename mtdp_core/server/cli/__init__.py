"""``mtdp server``: run the local Cytomine-compatible server and manage its data folder.

Sub-commands: ``serve``, ``import``, ``register-app``, ``launch``, ``user add``/``user list``,
``info``. All work on a data folder (``--data``, or ``$MTDP_SERVER_DATA``). ``launch`` uses
the server running on that folder when there is one, and otherwise starts one for the time
of the job. The table :data:`SUBCOMMANDS` lists them: their options are in :mod:`.arguments`,
what they do in :mod:`.commands` and :mod:`.launch`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mtdp_core.server.cli import arguments, commands, launch

DESCRIPTION = """\
A local Cytomine-compatible server: the official cytomine-python-client (3.0.0 with its job
API, or 4.x for data) talks to it over HTTP as to a real Cytomine core. It keeps projects,
images, annotations, terms, properties, attached files, software and jobs in a SQLite
database in a data folder, serves annotation crops cut from the image files, and runs
Cytomine apps from their descriptors as a processing server would.
"""

EPILOG = """\
examples:
  mtdp server serve --data mtdp-data --port 8080
  mtdp server import --data mtdp-data --project bccd ../shared/data/bccd/JPEGImages \\
      --annotations ../shared/data/bccd/boxes.csv
  mtdp server register-app --data mtdp-data descriptors/svm_train.json
  mtdp server launch svm_train --data mtdp-data --project bccd --param balanced_classes=true
  mtdp server user add alice --data mtdp-data

The data folder can also be given as $MTDP_SERVER_DATA. See docs/local_server.md.
"""


@dataclass(frozen=True)
class Subcommand:
    """One ``mtdp server`` command: its options (``arguments``) and what it runs; or a group of
    commands (``children``, e.g. ``user add``)."""

    name: str
    help: str
    description: str | None = None
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], int] | None = None
    children: Sequence[Subcommand] = ()


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("serve", "run the server until Ctrl-C", arguments.SERVE, arguments.serve, commands.serve),
    Subcommand(
        "import",
        "import a folder of images and their annotations into a project",
        arguments.IMPORT,
        arguments.import_,
        commands.import_,
    ),
    Subcommand(
        "register-app",
        "register a Cytomine app from its descriptor",
        arguments.REGISTER,
        arguments.register_app,
        commands.register_app,
    ),
    Subcommand(
        "launch",
        "launch a registered app on a project, as from the Cytomine web UI",
        arguments.LAUNCH,
        arguments.launch,
        launch.launch,
    ),
    Subcommand(
        "user",
        "manage users (add, list)",
        children=(
            Subcommand(
                "add",
                "create a user and print its keys",
                "Create a user with new API keys (printed, keep them).",
                arguments.user_add,
                commands.user_add,
            ),
            Subcommand("list", "list users (no keys)", None, arguments.data_folder, commands.user_list),
        ),
    ),
    Subcommand(
        "info",
        "what the data folder holds: projects, images, annotations, software, jobs",
        None,
        arguments.data_folder,
        commands.info,
    ),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "server",
        help="the local Cytomine-compatible server (serve, import, launch apps)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_subcommands(parser, SUBCOMMANDS, dest="server_command", metavar="SUBCOMMAND")


def _add_subcommands(parser: argparse.ArgumentParser, table: Sequence[Subcommand], *, dest: str, metavar: str) -> None:
    group = parser.add_subparsers(dest=dest, metavar=metavar)
    parser.set_defaults(func=lambda args: _missing_subcommand(parser))
    for command in table:
        sub = group.add_parser(command.name, help=command.help, description=command.description)
        if command.children:
            _add_subcommands(sub, command.children, dest=f"{command.name}_command", metavar="ACTION")
            continue
        if command.arguments is not None:
            command.arguments(sub)
        sub.set_defaults(func=command.run)


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2
