"""A predict app under faults, end to end: what the fault tests and the fault-matrix benchmark share.

:class:`Lab` is a local server (in this process, or in its own process so that it can be
killed) with a synthetic project, the apps registered and an svm-train model; a
:class:`~tests.helpers.faults.FaultProxy` in front of it; and :meth:`Lab.predict`, which runs
svm-predict in its own process through the proxy (as a person runs it with their keys: a job
is created), with faults, a stop after N pushed writes, or a server crash, and reports what
the job said and what the project holds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mtdp_core.server.app import LocalCytomine
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.testing import SeededProject, seed_synthetic_project
from tests.helpers.apps import FAST as APP_FAST
from tests.helpers.apps import as_argv, load_workflow
from tests.helpers.faults import (
    PUSH_WRITES,
    AppProcess,
    Fault,
    FaultProxy,
    PredictionCounts,
    ServerProcess,
    count_predictions,
    sqlite_query,
)
from tests.helpers.paths import REPO_ROOT

JOB_STATUS = {0: "NOT_LAUNCH", 1: "INQUEUE", 2: "RUNNING", 3: "SUCCESS", 4: "FAILED", 8: "KILLED"}
#: Tiny and fast (the push is measured, not the model).
FAST = {**APP_FAST, "batch_size": 16}


@dataclass
class Outcome:
    """One predict run: its exit code, job status and comment, and the project after it."""

    exit_code: int | None
    job_id: int | None
    status: str
    comment: str
    counts: PredictionCounts
    seconds: float
    log: str = ""


@dataclass
class Lab:
    root: Path
    data: Path
    project: SeededProject
    software: dict[str, int]
    public_key: str
    private_key: str
    proxy: FaultProxy
    in_process: LocalCytomine | None = None
    process: ServerProcess | None = None
    model_job: int | None = None
    _restarts: list[threading.Thread] = field(default_factory=list)

    # ------------------------------------------------------------------ set-up
    @classmethod
    @contextlib.contextmanager
    def open(
        cls, root: str | os.PathLike, *, killable: bool = False, n_images: int = 4, boxes_per_image: int = 30
    ) -> Iterator[Lab]:
        """A lab in ``root``: the server in this process, or in its own (``killable``) one."""
        root = Path(root)
        data = root / "server"
        server = LocalCytomine(data, config=ServerConfig(log_requests=False))
        server.start()
        try:
            project = seed_synthetic_project(
                server, root / "images", n_images=n_images, boxes_per_image=boxes_per_image, size=(160, 160)
            )
            software = {
                app: server.register_app(REPO_ROOT / "descriptors" / f"{app}.json")["id"]
                for app in ("svm_train", "svm_predict")
            }
            keys = (server.public_key, server.private_key)
        finally:
            if killable:
                server.stop()
        process = ServerProcess(data, log=root / "server.log").start() if killable else None
        upstream = process.url if process else f"http://127.0.0.1:{server.port}"
        with FaultProxy(upstream) as proxy:
            lab = cls(root, data, project, software, *keys, proxy, None if killable else server, process)
            try:
                yield lab
            finally:
                for thread in lab._restarts:
                    thread.join(60)
                if process:
                    process.stop()
                else:
                    server.stop()

    @property
    def query(self):
        return sqlite_query(self.data / "cytomine.sqlite3")

    def argv(self, app: str, **params) -> list[str]:
        base = {
            "cytomine_host": self.proxy.url,
            "cytomine_public_key": self.public_key,
            "cytomine_private_key": self.private_key,
            "cytomine_id_project": self.project.project_id,
            "cytomine_id_software": self.software[app],
        }
        return as_argv({**base, **params})

    def train(self) -> int:
        """An svm-train job (no faults); its id is the model of the predict runs."""
        process = AppProcess("svm_train", self.argv("svm_train", **FAST, cv_folds=3), cwd=self.root)
        code = process.wait(600)
        job = self.last_job("svm_train")
        if code != 0 or job is None or job["status"] != 3:
            raise RuntimeError(f"svm-train failed ({code}): {job and job['status_comment']}\n{process.output[-3000:]}")
        self.model_job = int(job["id"])
        return self.model_job

    # ------------------------------------------------------------------ runs
    def last_job(self, app: str) -> dict | None:
        rows = self.query("SELECT * FROM job WHERE software_id = ? ORDER BY id DESC LIMIT 1", (self.software[app],))
        return rows[0] if rows else None

    def targets(self) -> list[int]:
        return [a.id for a in self.project.annotations]

    def counts(self, mode: str) -> PredictionCounts:
        return count_predictions(self.query, self.targets(), mode)

    def predict_argv(self, mode: str) -> list[str]:
        return self.argv("svm_predict", cytomine_id_job=self.model_job, push_mode=mode, n_workers=0, batch_size=16)

    def start_predict(self, mode: str, env: dict[str, str] | None = None) -> AppProcess:
        return AppProcess("svm_predict", self.predict_argv(mode), cwd=self.root, env=env)

    def predict(
        self,
        mode: str,
        *,
        faults: Sequence[Fault] = (),
        seed: int = 0,
        stop: tuple[int, int] | None = None,
        crash_server_after: int | None = None,
        in_process: bool = False,
        timeout: float = 600.0,
    ) -> Outcome:
        """Run svm-predict once (no other job of it running) and report.

        Args:
            faults: injected while it runs; seed: their seed.
            stop: (signal, n): send the app ``signal`` right after its n-th pushed write was applied.
            crash_server_after: kill the server (SIGKILL) right after the n-th pushed write was
                applied, and start it again 2 s later (a killable lab only).
            in_process: run the app in this process (``main(argv)``: the same code, without the
                cost of starting Python and torch again; not with ``stop``).
        """
        if in_process and stop is not None:
            raise ValueError("a stop signal needs the app in its own process")
        if self.model_job is None:
            self.train()
        before = self.last_job("svm_predict")
        holder: list[AppProcess] = []
        self.proxy.set_faults(faults, seed=seed)
        if stop is not None:
            sig, n = stop
            self.proxy.on_request(n, lambda: holder[0].signal(sig), path=PUSH_WRITES)
        if crash_server_after is not None:
            self.proxy.on_request(crash_server_after, self.crash_server, path=PUSH_WRITES)
        start = time.perf_counter()
        output = ""
        if in_process:
            code: int | None = load_workflow("svm_predict").main(self.predict_argv(mode))
        else:
            process = self.start_predict(mode)
            holder.append(process)
            try:
                code = process.wait(timeout)
            except Exception:  # noqa: BLE001 - a hung app is an outcome too
                process.signal(signal.SIGKILL)
                code = None
            output = process.output
        seconds = time.perf_counter() - start
        self.proxy.set_faults([])
        self.proxy.settle()
        for thread in self._restarts:
            thread.join(60)
        job = self.last_job("svm_predict")
        if job is not None and before is not None and job["id"] == before["id"]:
            job = None
        return Outcome(
            code,
            int(job["id"]) if job else None,
            JOB_STATUS.get(job["status"], str(job["status"])) if job else "no job",
            (job["status_comment"] or "") if job else "",
            self.counts(mode),
            seconds,
            output,
        )

    def predict_together(self, mode: str, n: int = 2, timeout: float = 600.0) -> list[Outcome]:
        """``n`` svm-predict jobs started at once; their outcomes (counts: the project after all)."""
        if self.model_job is None:
            self.train()
        start = time.perf_counter()
        processes = [self.start_predict(mode) for _ in range(n)]
        codes = [p.wait(timeout) for p in processes]
        seconds = time.perf_counter() - start
        jobs = self.query(
            "SELECT * FROM job WHERE software_id = ? ORDER BY id DESC LIMIT ?", (self.software["svm_predict"], n)
        )
        counts = self.counts(mode)
        return [
            Outcome(
                code, int(job["id"]), JOB_STATUS.get(job["status"], "?"), job["status_comment"] or "", counts, seconds
            )
            for code, job in zip(codes, reversed(jobs))
        ]

    def crash_server(self) -> None:
        """SIGKILL the server now; start it again 2 s later (in the background)."""
        if self.process is None:
            raise RuntimeError("open the lab with killable=True to crash its server")
        self.process.kill(signal.SIGKILL)

        def restart() -> None:
            time.sleep(2.0)
            self.process.start()  # type: ignore[union-attr]

        thread = threading.Thread(target=restart, daemon=True)
        self._restarts.append(thread)
        thread.start()

    def reset_predictions(self) -> None:
        """Remove every prediction (algo annotations and suggested terms) and the push leases: a
        fresh start for the next scenario (through a store on the database, as an operator would)."""
        from mtdp_core.server.backends import CytomineStore

        if self.in_process is not None:
            store = self.in_process.store
            _reset(store)
        else:
            store = CytomineStore(self.data / "cytomine.sqlite3", self.data / "files")
            try:
                _reset(store)
            finally:
                store.close()


def _reset(store) -> None:
    with store.db.transaction() as db:
        db.execute("DELETE FROM algo_annotation_term")
        db.execute("DELETE FROM annotation WHERE kind = 'algo'")
        db.execute("DELETE FROM property WHERE key LIKE 'mtdp-push-lock:%'")


if __name__ == "__main__":  # a quick manual check: python -m tests.helpers.fault_lab
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, Lab.open(tmp) as lab:
        outcome = lab.predict("annotation", faults=[Fault("504_late", 0.3, methods=("POST",))])
        print(outcome.status, outcome.comment, outcome.counts, file=sys.stderr)
