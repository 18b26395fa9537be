"""``mtdp compare`` and ``mtdp report``: compare backbones on tasks, and report the comparison.

mtdp compare TASK... --backbone mtdp=densenet121:mtdp --backbone imagenet=densenet121:imagenet -o OUT
mtdp report OUT/scores.csv --reference "mtdp fe" -o OUT2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mtdp_core.evaluation.protocol import MODES, expand_seeds, load_task_folder, parse_backbone_spec

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from mtdp_core.transfer.cli import _floats, _ints

    p = subparsers.add_parser(
        "compare",
        help="compare backbones on tasks by feature extraction + SVM and/or fine-tuning",
        description=(
            "Evaluate each backbone on each task, as the paper's final comparison (multi-task pre-training "
            "vs ImageNet vs random initialisation): by feature extraction + the linear SVM protocol (fe) "
            "and/or fine-tuning (ft), for each seed, scored on each task's test set. A task is a folder "
            "TASK/train/<class>/<images> + TASK/test/<class>/<images>. Writes scores.csv, summary.csv "
            "(ranks, average rank), comparison.csv/.md (mean ± std, differences and their 2-sigma "
            "significance; std: sample standard deviation, ddof=1) and one PNG of per-task differences per "
            "baseline. A task with a TASK/val/<class>/ folder fine-tunes on train and picks the learning rate and "
            "epoch on val (else on a grouped hold-out of train); feature extraction fits the SVM on train + val. "
            "With --learning-curve, also the feature-extraction test score at fractions of the training set, "
            "the same subsets for every backbone, with paired differences: OUTPUT/learning_curves/."
        ),
        epilog=(
            "backbone specs: LABEL=ARCH:WEIGHTS, e.g. imagenet=efficientnet_lite0:imagenet, "
            "random=efficientnet_lite0:random, mtdp=densenet121:runs/seed{seed}.pth ({seed} is replaced by each "
            "seed: one pre-trained model per seed)."
        ),
    )
    p.add_argument(
        "tasks",
        type=Path,
        nargs="+",
        help="task folders (TASK/train/<class>/..., TASK/test/<class>/..., optionally TASK/val/<class>/...)",
    )
    p.add_argument(
        "--backbone",
        dest="specs",
        type=parse_backbone_spec,
        action="append",
        required=True,
        metavar="LABEL=ARCH:WEIGHTS",
        help="a backbone to evaluate (repeat for each)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder of the report")
    p.add_argument(
        "--mode",
        type=lambda s: [m for m in s.split(",") if m],
        default=["fe"],
        help=f"comma-separated, among {', '.join(MODES)}: feature extraction + SVM, fine-tuning (default: fe)",
    )
    p.add_argument("--seeds", type=_ints, default=[0], help="runs per backbone (default: 0)")
    p.add_argument("--reference", default=None, help="method compared with the others (default: the first backbone)")
    p.add_argument(
        "--groups",
        default=None,
        help="group ids from training file names for grouped CV: 'prefix' or a regex with one group",
    )
    p.add_argument("--size", type=int, default=224, help="input size in pixels (default: 224)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: automatic)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: automatic)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (reused across runs)")
    p.add_argument(
        "--learning-curve",
        type=_floats,
        default=None,
        metavar="F1,F2,...",
        help="also train the SVM on these fractions of each task's training images (e.g. 0.05,0.1,0.25,0.5,1), "
        "class-stratified subsets drawn per seed of --seeds, the same for every backbone; scored on test",
    )
    p.add_argument(
        "--curve-min-per-class",
        type=int,
        default=2,
        help="learning curve: at least this many training images per class in a subset (default: 2)",
    )
    ft = p.add_argument_group("fine-tuning (--mode ft)")
    ft.add_argument(
        "--lrs", type=_floats, default=[1e-3, 1e-4, 1e-5, 1e-6], help="learning rates (default: the paper's)"
    )
    ft.add_argument("--epochs", type=int, default=100, help="epochs per learning rate (default: 100)")
    ft.add_argument("--ft-batch-size", type=int, default=32, help="training batch size (default: 32)")
    p.set_defaults(func=_cmd_compare)

    r = subparsers.add_parser(
        "report",
        help="comparison tables and plots from a scores CSV",
        description=(
            "Read a scores CSV (columns method, task, score; seed and metric optional; e.g. written by "
            "`mtdp compare`) and write summary.csv (mean, std, rank per task, average rank), comparison.csv "
            "and comparison.md (differences to the reference and their significance: |delta| > 2 max(std)) "
            "and a PNG of per-task differences with 2-sigma error bars for each baseline."
        ),
    )
    r.add_argument("scores", type=Path, help="scores CSV")
    r.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    r.add_argument("--reference", default=None, help="the method compared with the others (default: the first)")
    r.add_argument(
        "--baselines",
        type=lambda s: [m for m in s.split(",") if m],
        default=None,
        help="comma-separated methods to compare with (default: all others)",
    )
    r.add_argument("--title", default="Transfer comparison", help="title of the Markdown report")
    r.set_defaults(func=_cmd_report)


def _cmd_compare(args: argparse.Namespace) -> int:
    from mtdp_core.errors import ConfigurationError
    from mtdp_core.evaluation.protocol import method_name, run_transfer
    from mtdp_core.evaluation.reports import (
        markdown_comparison,
        markdown_learning_curves,
        write_learning_curve_report,
        write_report,
    )
    from mtdp_core.transfer.finetune import FineTuner

    bad = [m for m in args.mode if m not in MODES]
    if bad:
        raise ConfigurationError(f"Invalid --mode {bad}: use fe and/or ft.")
    tasks = [load_task_folder(t, groups=args.groups) for t in args.tasks]
    specs = expand_seeds(args.specs, args.seeds)
    tuner = FineTuner(
        image_size=args.size,
        learning_rates=args.lrs,
        epochs=args.epochs,
        batch_size=args.ft_batch_size,
        num_workers=args.workers,
        device=args.device,
    )
    result = run_transfer(
        tasks,
        specs,
        modes=args.mode,
        finetuner=tuner,
        image_size=args.size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        cache_dir=args.cache_dir,
        curve_fractions=args.learning_curve,
        curve_min_per_class=args.curve_min_per_class,
    )
    reference = args.reference or method_name(args.specs[0].label, args.mode[0])
    write_report(result.table, args.output, reference=reference)
    print(markdown_comparison(result.table, reference, [m for m in result.table.methods if m != reference]))
    if result.curves:
        curve_methods = list(dict.fromkeys(r["method"] for r in result.curves))
        curve_ref = reference if reference in curve_methods else method_name(args.specs[0].label, "fe")
        write_learning_curve_report(result.curves, args.output / "learning_curves", reference=curve_ref)
        print()
        print(markdown_learning_curves(result.curves, curve_ref, [m for m in curve_methods if m != curve_ref]))
    print(f"\nreport written to {args.output}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mtdp_core.evaluation.ranking import ScoreTable
    from mtdp_core.evaluation.reports import markdown_comparison, write_report

    table = ScoreTable.from_csv(args.scores)
    reference = args.reference or table.methods[0]
    baselines = args.baselines or [m for m in table.methods if m != reference]
    write_report(table, args.output, reference=reference, baselines=baselines, title=args.title)
    print(markdown_comparison(table, reference, baselines))
    print(f"\nreport written to {args.output}")
    return 0
