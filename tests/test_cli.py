import json
import subprocess
import sys

import numpy as np

from mtdp_core.cli import main


def test_help_explains_itself():
    result = subprocess.run([sys.executable, "-m", "mtdp_core", "--help"], capture_output=True, text=True, check=True)
    assert "multi-task pre-training" in result.stdout and "backbones" in result.stdout and "features" in result.stdout


def test_backbones_command(capsys):
    assert main(["backbones", "dense*"]) == 0
    out = capsys.readouterr().out
    assert "densenet121" in out and "1024" in out and "mtdp" in out and "resnet50" not in out


def test_weights_list_command(capsys):
    assert main(["weights", "list", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "resnet50-0676ba61.pth" in out and "missing" in out and "resnet50-mh-best-191205-141200.pth" in out


def test_weights_verify_command():
    assert main(["weights", "verify", "efficientnet_lite0"]) == 0


def test_features_command(tiny_image_folder, tmp_path):
    out = tmp_path / "f.npz"
    code = main(
        [
            "features",
            str(tiny_image_folder),
            "-o",
            str(out),
            "--backbone",
            "resnet18",
            "--weights",
            "random",
            "--size",
            "32",
            "--workers",
            "0",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    data = np.load(out)
    assert data["features"].shape == (8, 512)
    assert set(data["labels"]) == {"red", "blue"}
    identity = json.loads(str(data["identity"]))
    assert identity["arch"] == "resnet18" and identity["preprocessing"]["size"] == 32


def test_user_errors_exit_1_with_a_message(tiny_image_folder, tmp_path, caplog):
    code = main(["features", str(tiny_image_folder), "-o", str(tmp_path / "f.npz"), "--backbone", "resnet05"])
    assert code == 1
    assert "Unknown backbone 'resnet05'" in caplog.text


def test_command_table_matches_the_modules():
    """COMMANDS lists every sub-command the modules register, with its module and the same help line."""
    import argparse
    import importlib

    from mtdp_core.cli import COMMAND_MODULES, COMMANDS

    registered: dict[str, tuple[str, str | None]] = {}

    class Recorder:
        """What a module's ``register(subparsers)`` uses of argparse's sub-parsers: ``add_parser``."""

        def __init__(self, module: str) -> None:
            self.module, self.subparsers = module, argparse.ArgumentParser().add_subparsers()

        def add_parser(self, name: str, **kwargs):
            registered[name] = (self.module, kwargs.get("help"))
            return self.subparsers.add_parser(name, **kwargs)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(Recorder(module))
    assert registered == COMMANDS


def test_help_and_the_server_commands_do_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from mtdp_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for argv in (['--help'], ['server', '--help']):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr


def test_a_command_gets_its_full_options_and_a_typo_lists_the_commands(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["features", "--help"])
    assert "--backbone" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["featurs"])
    assert "invalid choice: 'featurs'" in capsys.readouterr().err


def test_the_cytomine_clients_request_logs_show_at_debug_only():
    import logging

    from mtdp_core.logs import configure_logging

    client = logging.getLogger("cytomine.client")
    before = logging.getLogger().level
    try:
        configure_logging("INFO")
        assert not client.isEnabledFor(logging.INFO) and client.isEnabledFor(logging.WARNING)
        configure_logging("DEBUG")
        assert client.isEnabledFor(logging.INFO)
    finally:
        configure_logging(before)


def test_run_guarded_turns_endings_into_exit_statuses(caplog):
    from mtdp_core.cli import run_guarded
    from mtdp_core.errors import ConfigurationError

    def fails():
        raise ConfigurationError("Set --x to 3 (got 2).")

    def interrupted():
        raise KeyboardInterrupt

    assert run_guarded(lambda: None) == 0 and run_guarded(lambda: 2) == 2
    assert run_guarded(fails) == 1 and "Set --x to 3" in caplog.text
    assert run_guarded(interrupted, on_interrupt="run it again to resume") == 130
    assert "run it again to resume" in caplog.text
