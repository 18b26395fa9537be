#!/usr/bin/env python
"""Multi-task pre-training of a backbone on a pool of tasks (Mormont et al. 2020).

    python training/train_multitask.py --config training/configs/shared_small.json
    python training/train_multitask.py --config training/configs/paper_densenet121.json --pool pools/paper22
    torchrun --nproc-per-node 4 training/train_multitask.py --config ... (DDP, one process per GPU)

Flags override the config file; the resolved config is saved as OUTPUT_DIR/config.json.
Running the same command again resumes from OUTPUT_DIR/checkpoints/last.pt. When the run
completes, OUTPUT_DIR/backbone.pt is loadable with create_backbone(arch, weights=path), and
its path is printed on stdout. See docs/multitask_training.md and training/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mtdp_core.cli import run_guarded
from mtdp_core.logs import configure_logging
from mtdp_core.training import train
from mtdp_core.training.config import add_config_arguments, config_from_args, load_config_file


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="JSON (or TOML) file of options; flags below override it"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: $MTDP_LOG_LEVEL or INFO)",
    )
    add_config_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging(args.log_level)

    def work() -> int:
        base = load_config_file(args.config) if args.config else {}
        config = config_from_args(args, base)
        if args.print_config:
            print(json.dumps(config.to_dict(), indent=2))
            return 0
        result = train(config)
        if result.backbone_path is not None:
            print(result.backbone_path)
        return 0

    return run_guarded(work, on_interrupt="interrupted: run the same command again to resume from the last checkpoint")


if __name__ == "__main__":
    sys.exit(main())
