"""The entrypoint of every task: ``python -m mtdp_core.appengine TASK``.

The App Engine runs a task's container with no arguments and no environment of its own: the
image's ENTRYPOINT (this module, with the task's name) reads ``/inputs``, runs the task and writes
``/outputs``; exit status 0 means success, anything else FAILED. A failure a person can fix (a
missing input, an unreadable image, a model of another backbone) ends with exit status 1 and its
message as the last line of the log, which leads with the fix.

For local runs the folders are options (``--inputs``, ``--outputs``); ``mtdp appengine run``
provisions them as the App Engine does and checks the outputs afterwards.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtdp_core.appengine.errors import TaskOutputError
from mtdp_core.appengine.files import TaskInputs, TaskOutputs, output_problems
from mtdp_core.appengine.spec import INPUT_FOLDER, OUTPUT_FOLDER, TaskDefinition, task_descriptor
from mtdp_core.errors import MtdpError

logger = logging.getLogger("mtdp.appengine")


@dataclass
class TaskContext:
    """What a task's ``run`` works with.

    Attributes:
        task: its definition.
        args: its parameters, parsed from ``/inputs`` by its parser (defaults applied for absent
            ones), the same namespace the legacy app's pipeline reads.
        inputs: the file inputs (images, model file, zip, arrays).
        outputs: where to write the declared outputs.
        workdir: scratch space, removed after the run.
    """

    task: TaskDefinition
    args: argparse.Namespace
    inputs: TaskInputs
    outputs: TaskOutputs
    workdir: Path

    def local_job(self, infolder: Path | None = None):
        """A legacy local job (BIAFLOWS ``--local``) over ``infolder``, writing under the workdir:
        the apps' pipelines run unchanged on it (progress goes to the log)."""
        from mtdp_core.cytomine.biaflows import BiaflowsFlags
        from mtdp_core.cytomine.job import LocalJob

        flags = BiaflowsFlags(
            local=True,
            do_upload_annotations=False,
            do_upload_metrics=False,
            infolder=infolder,
            outfolder=self.workdir / "job",
            cache_dir=self.workdir / "cache",
        )
        return LocalJob(flags, self.task.legacy_app or self.task.name)


def run_task(
    task: TaskDefinition,
    input_folder: str | os.PathLike,
    output_folder: str | os.PathLike,
    *,
    workdir: str | os.PathLike | None = None,
) -> str:
    """Run ``task`` on ``input_folder``, write ``output_folder``; return the task's summary.

    Raises an :class:`~mtdp_core.errors.MtdpError` on an input or pipeline failure, and a
    :class:`TaskOutputError` when the outputs would not be accepted (a bug: checked here so that
    it fails with a message rather than as the App Engine's bare FAILED).
    """
    started = time.monotonic()
    inputs = TaskInputs(task, input_folder)
    args, _unknown = task.parser.parse_app_args(inputs.parameter_argv())  # type: ignore[attr-defined]
    scratch = Path(tempfile.mkdtemp(prefix=f"mtdp-task-{task.name}-", dir=workdir))
    try:
        outputs = TaskOutputs(task, output_folder)
        context = TaskContext(task, args, inputs, outputs, scratch)
        summary = task.run(context)
        missing = outputs.missing()
        if missing:
            raise TaskOutputError(f"Task {task.name} did not write the outputs {missing}: this is a bug.")
        problems = output_problems(task_descriptor(task), output_folder)
        if problems:
            raise TaskOutputError(f"Task {task.name} wrote outputs the App Engine would refuse: {'; '.join(problems)}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("%s done in %.0f s: %s", task.name, time.monotonic() - started, summary)
    return summary


def cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """The CPUs this container may use (cgroup v2 ``cpu.max``, or v1's CFS quota), rounded up;
    None when unlimited. The App Engine sets it from the descriptor's ``cpus``."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 else None
    return None


def limit_threads(root: str | os.PathLike = "/sys/fs/cgroup") -> None:
    """As many threads as the container has CPUs, for every engine: torch and ONNX Runtime count
    the node's cores, and a task limited to 2 CPUs on a 64-core node would run 64 threads fighting
    for 2 (slower than 2). Set through ``OMP_NUM_THREADS``, which both read (``runtime.cpu_threads``),
    and torch's own setting when torch is already imported (the torch-free images have none)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    quota = cpu_quota(root)
    if quota is None or quota >= (os.cpu_count() or 1):
        return
    logger.info("CPU limit %d: %d threads instead of %d", quota, quota, os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(quota)
    torch = sys.modules.get("torch")
    if torch is not None and quota < torch.get_num_threads():
        torch.set_num_threads(quota)


def get_args_parser() -> argparse.ArgumentParser:
    from mtdp_core.appengine.tasks import list_tasks

    parser = argparse.ArgumentParser(
        prog="python -m mtdp_core.appengine",
        description="Run an mtdp App Engine task: read its inputs, write its outputs (the container's entrypoint).",
    )
    parser.add_argument("task", choices=list_tasks(), help="the task")
    parser.add_argument(
        "--inputs", type=Path, default=Path(INPUT_FOLDER), help=f"input folder (default: {INPUT_FOLDER})"
    )
    parser.add_argument(
        "--outputs", type=Path, default=Path(OUTPUT_FOLDER), help=f"output folder (default: {OUTPUT_FOLDER})"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: the system's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mtdp_core.appengine.tasks import get_task
    from mtdp_core.logs import configure_logging

    configure_logging()
    args = get_args_parser().parse_args(argv)
    try:
        limit_threads()
        run_task(get_task(args.task), args.inputs, args.outputs, workdir=args.workdir)
        return 0
    except MtdpError as exc:
        logger.debug("details", exc_info=True)
        logger.error("FAILED: %s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error("FAILED: interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - any crash must end with a status and a useful last line
        logger.error("unexpected error:\n%s", traceback.format_exc())
        logger.error("FAILED: unexpected error (a bug, see above): %s: %s", type(exc).__name__, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
