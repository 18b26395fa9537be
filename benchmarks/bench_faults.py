"""The fault matrix: svm-predict under each fault, in both push modes, and what the project holds.

A local Cytomine server (in its own process, so that it can be killed) holds a synthetic
project; svm-train makes a model (no faults); then, for each scenario and push mode, from an
empty project (no prediction):

1. svm-predict runs once through a fault-injecting proxy (``tests/helpers/faults.py``): the job's final
   status, and the predictions the project holds (counted in the server's database: expected,
   present, duplicated);
2. it runs again without faults (a re-run, as the failure message advises): status and counts.

The baseline is the first scenario (no fault), measured in the same run: the time columns
compare each scenario with it. Scenarios with faults run the app in this process (the same
code, without starting Python and torch again); stops, kills and concurrent jobs run it in its
own process, as a processing server does.

Usage (from the repository root; the harness is in tests/helpers):
    PYTHONPATH=. python benchmarks/bench_faults.py [--images 4 --boxes 30] [--modes term,annotation]
        [--scenarios none,500,...] [--seed 0] [--output results.json] [--markdown table.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mtdp_core.logs import configure_logging

try:  # the harness is the tests' (tests/helpers): run from the repository root with PYTHONPATH=.
    from tests.helpers.fault_lab import Lab, Outcome
    from tests.helpers.faults import Fault
except ModuleNotFoundError as exc:
    raise SystemExit(
        f"Run from the repository root with PYTHONPATH=. (the harness is in tests/helpers): {exc}"
    ) from exc

WRITES = ("POST", "PUT", "DELETE")
RATE = 0.2


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    faults: tuple[Fault, ...] = ()
    stop: int | None = None  # a signal sent after STOP_AFTER pushed writes
    crash: bool = False
    together: bool = False
    process: bool = False  # the app in its own process (always with stop, crash, together)


#: Writes after which the app is stopped or the server killed (in annotation mode: chunks of 100).
STOP_AFTER = {"term": 30, "annotation": 1}

SCENARIOS = (
    Scenario("none", "no fault (baseline)"),
    Scenario("500", f"{RATE:.0%} of writes answered 500, not applied", (Fault("500", RATE, methods=WRITES),)),
    Scenario(
        "500_late", f"{RATE:.0%} of writes applied, then answered 500", (Fault("500_late", RATE, methods=WRITES),)
    ),
    Scenario(
        "504_late", f"{RATE:.0%} of writes applied, then answered 504", (Fault("504_late", RATE, methods=WRITES),)
    ),
    Scenario(
        "504_early",
        f"{RATE:.0%} of writes answered 504 at once, applied 1 s later",
        (Fault("504_early", RATE, methods=WRITES, delay=1.0),),
    ),
    Scenario("reset", f"{RATE:.0%} of writes reset, not applied", (Fault("reset", RATE, methods=WRITES),)),
    Scenario("reset_late", f"{RATE:.0%} of writes applied, then reset", (Fault("reset_late", RATE, methods=WRITES),)),
    Scenario("delay", "half of all requests delayed 0.5 s", (Fault("delay", 0.5, path="^/api/", delay=0.5),)),
    Scenario(
        "500_all",
        f"{RATE:.0%} of all requests answered 500 (start-up included)",
        (Fault("500", RATE, path="^/api/"),),
    ),
    Scenario("none_process", "no fault, the app in its own process (baseline of the rows below)", process=True),
    Scenario("sigterm", "SIGTERM after N pushed writes (Cytomine stops the job)", stop=signal.SIGTERM),
    Scenario("sigkill", "SIGKILL after N pushed writes", stop=signal.SIGKILL),
    Scenario("server_crash", "server killed (SIGKILL) after N pushed writes, back 2 s later", crash=True),
    Scenario("together", "two jobs started at once", together=True),
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="images of the synthetic project (default 4)")
    parser.add_argument("--boxes", type=int, default=30, help="annotations per image (default 30)")
    parser.add_argument("--modes", default="term,annotation", help="push modes (default: both)")
    parser.add_argument(
        "--scenarios", default=",".join(s.name for s in SCENARIOS), help="scenarios to run (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the server and jobs here (default: temp)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the matrix as a Markdown table here")
    return parser


@dataclass
class Row:
    scenario: str
    what: str
    mode: str
    expected: int
    first_status: str
    first_comment: str
    first_present: int
    first_duplicated: int
    first_seconds: float
    rerun_status: str
    rerun_present: int
    rerun_duplicated: int
    faults_injected: int


def run_scenario(lab: Lab, scenario: Scenario, mode: str, seed: int, cache: Path) -> Row:
    lab.reset_predictions()
    os.environ["MTDP_CACHE_DIR"] = str(cache / f"{scenario.name}-{mode}")  # crops downloaded under the faults
    injected_before = _faults_met(lab)
    if scenario.together:
        outcomes = lab.predict_together(mode)
        first = Outcome(
            None,
            None,
            " + ".join(o.status for o in outcomes),
            " | ".join(o.comment for o in outcomes),
            outcomes[0].counts,
            outcomes[0].seconds,
        )
    elif scenario.stop is not None:
        first = lab.predict(mode, stop=(scenario.stop, STOP_AFTER[mode]))
    elif scenario.crash:
        first = lab.predict(mode, crash_server_after=STOP_AFTER[mode])
    else:
        first = lab.predict(mode, faults=scenario.faults, seed=seed, in_process=not scenario.process)
    injected = _faults_met(lab) - injected_before
    again = lab.predict(mode, in_process=True)
    row = Row(
        scenario.name,
        scenario.what,
        mode,
        first.counts.expected,
        first.status,
        first.comment,
        first.counts.present,
        first.counts.duplicated,
        round(first.seconds, 1),
        again.status,
        again.counts.present,
        again.counts.duplicated,
        injected,
    )
    print(
        f"{scenario.name:>12} {mode:>10}: {first.status} {first.counts.present}/{first.counts.expected} "
        f"(+{first.counts.duplicated} dup) in {first.seconds:.1f} s; re-run {again.status} "
        f"{again.counts.present}/{again.counts.expected} (+{again.counts.duplicated} dup)  [{first.comment[:90]}]",
        flush=True,
    )
    return row


def _faults_met(lab: Lab) -> int:
    """Requests the proxy failed: injected faults, and 502s while the server was down."""
    return sum(lab.proxy.stats.faults.values()) + lab.proxy.stats.upstream_errors


def markdown(rows: list[Row]) -> str:
    lines = [
        "| fault | push mode | faults met | 1st job | present / expected | duplicated | 1st run (s) | re-run | "
        "present | duplicated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.what} | {r.mode} | {r.faults_injected} | {r.first_status} | {r.first_present} / {r.expected} "
            f"| {r.first_duplicated} "
            f"| {r.first_seconds:.1f} | {r.rerun_status} | {r.rerun_present} | {r.rerun_duplicated} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    os.environ["MTDP_LOG_LEVEL"] = "ERROR"  # the apps' logs (their retries are counted, not printed)
    configure_logging("ERROR")
    modes = [m for m in args.modes.split(",") if m]
    chosen = set(args.scenarios.split(","))
    unknown = chosen - {s.name for s in SCENARIOS}
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}: use {', '.join(s.name for s in SCENARIOS)}")
    scenarios = [s for s in SCENARIOS if s.name in chosen]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        os.chdir(root)  # the apps write ./mtdp-out
        with Lab.open(root, killable=True, n_images=args.images, boxes_per_image=args.boxes) as lab:
            lab.train()
            for mode in modes:  # warm-up, not measured: imports and model loading in this process
                os.environ["MTDP_CACHE_DIR"] = str(root / "cache" / "warm-up")
                lab.predict(mode, in_process=True)
            rows = [run_scenario(lab, s, mode, args.seed, root / "cache") for s in scenarios for mode in modes]
    results = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": [asdict(r) for r in rows],
    }
    table = markdown(rows)
    print(table)
    print(f"total {results['seconds']:.0f} s")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    bad = [r for r in rows if r.rerun_status != "SUCCESS" or r.rerun_present != r.expected or r.rerun_duplicated]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
