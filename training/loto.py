#!/usr/bin/env python
"""The leave-one-task-out experiment (Mormont et al. 2020, Sections IV-D/E), end to end.

    python training/loto.py --config training/configs/loto_shared_small.json
    python training/loto.py --config ... --output-dir runs/loto-gpu --device cuda --seeds 0,1,2,3,4

For each left-out set of related tasks, each multi-task hyper-parameter set and each seed:
pre-train on the pool minus the set, transfer by feature extraction + linear SVM to each
task of the set, rank the hyper-parameter sets and select one per task without its own
rank; then compare the selected multi-task models with ImageNet and random initialisation
by feature extraction (every task) and fine-tuning (the config's finetune_tasks).

Outputs (OUTPUT_DIR): results.md (every table), loto/ (scores, ranks, selection),
comparison_fe/ and comparison_ft/ (CSV, Markdown, plots of per-task differences with
2-sigma bars), records.jsonl, pretrain/ (the training runs), features/ (the feature cache).
Running the command again reuses completed pre-trainings and cached features;
--report-only writes the reports again from records.jsonl without computing anything.
See training/README.md for the recorded run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mtdp_core.cli import run_guarded
from mtdp_core.evaluation.experiment import ExperimentConfig, report_experiment, run_experiment
from mtdp_core.logs import configure_logging


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid seeds {text!r}: give integers separated by commas, e.g. 0,1,2"
        ) from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="JSON experiment config (keys: see mtdp_core.evaluation.experiment.ExperimentConfig)",
    )
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument("--seeds", type=_ints, default=None, help="override the config's seeds, e.g. 0,1,2")
    parser.add_argument("--device", default=None, help="override the device: auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the reports again from OUTPUT_DIR/records.jsonl; train and evaluate nothing",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: $MTDP_LOG_LEVEL or INFO)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging(args.log_level)

    def work() -> int:
        config = ExperimentConfig.from_file(args.config)
        if args.output_dir:
            config.output_dir = args.output_dir
        if args.seeds:
            config.seeds = args.seeds
        if args.device:
            config.device = args.device
            config.pretrain = {**config.pretrain, "device": args.device}
        result = report_experiment(config.output_dir) if args.report_only else run_experiment(config)
        print(result.paths["results"])
        return 0

    return run_guarded(
        work, on_interrupt="interrupted: run the same command again to reuse the completed pre-trainings"
    )


if __name__ == "__main__":
    sys.exit(main())
