"""``mtdp pool``: build a task pool from ../shared/data, describe a pool, index one."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mtdp_core.data.pools import SPLITS, load_pool, write_pool_index
from mtdp_core.data.sources import build_shared_pool, get_source, list_sources
from mtdp_core.errors import DataError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pool",
        help="build, describe or index a pool of tasks for multi-task pre-training",
        description="Task pools: one folder per classification task with train/val/test splits (docs/task_pools.md).",
    )
    sub = p.add_subparsers(dest="pool_command", metavar="ACTION", required=True)

    sources = "\n".join(f"  {name:<16} {get_source(name).description}" for name in list_sources())
    build = sub.add_parser(
        "build",
        help="turn the sets of ../shared/data into a pool",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write one task folder per set (task.json + samples.tsv pointing at the original images) and pool.json.\n"
            "Existing train/test splits are kept; a validation split is carved out of train; sets without splits get\n"
            "a seeded, stratified train/val/test split, grouped by patient/slide/image where the set has such ids.\n"
            "BCCD's boxes are cropped once into OUT/bccd/crops and reused by later builds.\n\n"
            f"sets:\n{sources}"
        ),
    )
    build.add_argument(
        "--shared-data", type=Path, default=Path("../shared/data"), help="folder of the sets (default: ../shared/data)"
    )
    build.add_argument("--out", "-o", type=Path, required=True, help="pool folder to write (e.g. pools/shared)")
    build.add_argument(
        "--tasks",
        nargs="+",
        choices=list_sources(),
        default=None,
        metavar="TASK",
        help="build only these tasks (default: all)",
    )
    build.add_argument("--seed", type=int, default=0, help="seed of the splits that are made (default: 0)")
    build.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of train moved to val where a set has no val split (default: 0.2)",
    )
    build.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share held out as test where a set has no split at all (default: 0.2)",
    )
    build.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip checking each image's sha256 against MANIFEST.tsv",
    )
    build.set_defaults(func=_cmd_build)

    info = sub.add_parser("info", help="list the tasks of a pool: classes, metric, groups, samples per split")
    info.add_argument("pool", type=Path, help="pool folder")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument(
        "--check", action="store_true", help="also check that every image file exists (reads every manifest)"
    )
    info.set_defaults(func=_cmd_info)

    index = sub.add_parser("index", help="(re)write pool.json from the task folders, so that loading reads one file")
    index.add_argument("pool", type=Path, help="pool folder")
    index.set_defaults(func=_cmd_index)


def _cmd_build(args: argparse.Namespace) -> int:
    pool = build_shared_pool(
        args.shared_data,
        args.out,
        tasks=args.tasks,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        verify=args.verify,
    )
    _print_table(pool.summary())
    logger.info("pool with %d tasks written to %s", len(pool), args.out)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    pool = load_pool(args.pool)
    rows = pool.summary()
    missing = {}
    if args.check:
        for task in pool:
            absent = task.check_files()
            if absent:
                missing[task.name] = [str(p) for p in absent]
    if args.json:
        print(
            json.dumps(
                {
                    "pool": str(args.pool),
                    "name": pool.name,
                    "description": pool.description,
                    "tasks": rows,
                    **({"missing": missing} if args.check else {}),
                },
                indent=2,
            )
        )
    else:
        _print_table(rows)
    if missing:
        first = next(iter(missing.items()))
        raise DataError(
            f"{sum(len(v) for v in missing.values())} image files are missing, e.g. {first[1][0]} (task {first[0]}): "
            "restore them or rebuild the pool."
        )
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    path = write_pool_index(args.pool)
    print(path)
    return 0


def _print_table(rows: list[dict]) -> None:
    header = f"{'task':<18} {'classes':>7} {'metric':<9} {'groups':<8} " + " ".join(f"{s:>6}" for s in SPLITS)
    print(header)
    for r in rows:
        print(
            f"{r['name']:<18} {r['n_classes']:>7} {r['metric']:<9} {r['group_kind']:<8} "
            + " ".join(f"{r[s]:>6}" for s in SPLITS)
        )
    print(
        f"{'total':<18} {sum(r['n_classes'] for r in rows):>7} {'':<9} {'':<8} "
        + " ".join(f"{sum(r[s] for r in rows):>6}" for s in SPLITS)
    )
