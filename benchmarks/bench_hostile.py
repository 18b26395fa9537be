"""The local server under hostile input: what it answers, and how much memory it takes.

The server runs in its own process, started exactly as users start it (``mtdp server serve``,
default limits). A hostile user with valid keys sends every request of
``mtdp_core.server.testing.HOSTILE_REQUESTS`` (oversized crops, windows and bodies; file names
``.``, ``..``, with NUL or CR/LF, of 300 characters; ids above 2^63; JSON nested 1,000 deep; a body
of ``--junk-mib`` MiB;
``increaseArea=nan``, ``color=notacolor``, ``thickness`` 10^12, ...): the script counts the answers
by status (all must be 4xx, none 5xx).

Memory: the server's peak resident set (``VmHWM`` of ``/proc/<pid>/status``, reset to the current
resident set at the start of each phase through ``/proc/<pid>/clear_refs``) in four phases: idle
after start-up; ordinary crops (``maxSize`` 256, including the decoding of a ``--size`` x ``--size``
image into the cache); the hostile requests; the largest requests the limits allow (a crop, a mask
and a window of the whole image at full resolution: ``--size`` 4096 makes them exactly 4096 x 4096,
the default ``--max-pixels``).

Baseline in the same run: ``--baseline-rev REV`` runs the same phases first against the server of
another revision of this repository (``git archive REV``), e.g. the one before the limits.

Usage:
    python benchmarks/bench_hostile.py [--size 4096] [--repeat 1] [--baseline-rev REV] [--output hostile.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mtdp_core.server.app import LocalCytomine, read_admin_keys, read_server_file
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.geometry import box_in_cytomine
from mtdp_core.server.testing import hostile_requests, seed_synthetic_project, signed_request


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="side of the large image, in pixels (default: 4096)")
    parser.add_argument("--repeat", type=int, default=1, help="times each phase's requests are sent (default: 1)")
    parser.add_argument(
        "--junk-mib", type=int, default=300, help="size of the junk body among the hostile requests (default: 300)"
    )
    parser.add_argument(
        "--baseline-rev", default=None, help="also run the server of this git revision first, as the baseline"
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    return parser


def machine() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(), "date": time.strftime("%F")}


def seed(data: Path, images: Path, size: int) -> dict[str, int]:
    """A data folder with the synthetic project (small boxes) and one ``size`` x ``size`` noise image
    annotated by a box covering it whole; returns the ids the requests need."""
    with LocalCytomine(data, config=ServerConfig(log_requests=False)) as server:
        seeded = seed_synthetic_project(server, images / data.name)
        path = images / "large.png"
        if not path.exists():
            noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(noise).save(path, compress_level=1)
        large = server.store.images.add(path, seeded.project_id)
        whole = box_in_cytomine(0, 0, size, size, size).wkt
        annotation = server.store.annotations.create({"image": large["id"], "location": whole}, server.admin)
        small = min(seeded.annotations, key=lambda a: (a.box[2] - a.box[0]) * (a.box[3] - a.box[1]))
        return {
            "project": seeded.project_id,
            "image": seeded.images[0]["id"],
            "small": small.id,
            "large_image": large["id"],
            "large": annotation["id"],
            "boxes": [a.id for a in seeded.annotations],
        }


@contextmanager
def serve(data: Path, code: Path = REPO) -> Iterator[tuple[str, tuple[str, str], int]]:
    """``mtdp server serve --data DATA`` of the code in ``code``, in a child process: (url, admin keys, pid)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mtdp_core", "server", "serve", "--data", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=code,
    )
    try:
        deadline = time.monotonic() + 60
        while (info := read_server_file(data)) is None or info["pid"] != process.pid:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the server process did not start")
            time.sleep(0.1)
        keys = read_admin_keys(data)
        yield info["url"], (keys["public_key"], keys["private_key"]), process.pid
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def memory(pid: int) -> dict[str, float]:
    """Peak and current resident memory of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) / 1024
    return {"peak_mib": round(fields["VmHWM"], 1), "rss_mib": round(fields["VmRSS"], 1)}


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def phase(name: str, pid: int, send) -> dict:
    reset = reset_peak(pid)
    start = time.perf_counter()
    statuses = send()
    result = {"phase": name, "peak_reset": reset, "seconds": round(time.perf_counter() - start, 2), **memory(pid)}
    if statuses is not None:
        result["statuses"] = dict(sorted(collections.Counter(statuses).items()))
    return result


def export(rev: str, folder: Path) -> Path:
    """The files of revision ``rev`` of this repository in ``folder``."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run(code: Path, work: Path, label: str, args: argparse.Namespace) -> dict:
    """The four phases against the server of ``code``."""
    ids = seed(work / label, work / "images", args.size)
    answers: list[dict] = []
    hostile = hostile_requests(ids["project"], ids["image"], ids["small"], junk_body_bytes=args.junk_mib << 20)
    with serve(work / label, code) as (url, keys, pid):

        def get(path: str) -> int:
            return signed_request(url, keys, "GET", path, timeout=600).status_code

        def ordinary() -> list[int]:
            crops = [f"/api/userannotation/{a}/crop.png?maxSize=256" for a in ids["boxes"]]
            crops.append(f"/api/userannotation/{ids['large']}/crop.png?maxSize=256")
            return [get(path) for _ in range(args.repeat) for path in crops]

        def attack() -> list[int]:
            for _ in range(args.repeat):
                for request in hostile:
                    try:
                        status = request.send(url, keys, timeout=600).status_code
                    except OSError as exc:  # the server dropped the connection (or died)
                        status = f"no answer ({type(exc).__name__})"
                    answers.append({"what": request.what, "status": status, "expected": request.expect})
            return [a["status"] for a in answers]

        def largest() -> list[int]:
            side, large = args.size, ids["large"]
            paths = [
                f"/api/userannotation/{large}/crop.png?maxSize={side}",
                f"/api/userannotation/{large}/mask.png?maxSize={side}",
                f"/api/imageinstance/{ids['large_image']}/window-0-0-{side}-{side}.png",
            ]
            return [get(path) for _ in range(args.repeat) for path in paths]

        phases = [
            phase("idle (after start-up)", pid, lambda: [get("/api/user/current.json")]),
            phase("ordinary crops, maxSize 256", pid, ordinary),
            phase(f"hostile requests ({len(hostile)} kinds)", pid, attack),
            phase(f"largest allowed: crop, mask, window {args.size} x {args.size}", pid, largest),
        ]
    return {
        "server": label,
        "phases": phases,
        "peak_mib": max(p["peak_mib"] for p in phases),
        "answers": answers[: len(hostile)],
        "unexpected": [a for a in answers if a["status"] != a["expected"]],
    }


def report(result: dict) -> None:
    print(f"server: {result['server']}")
    print(f"  {'phase':<52} {'peak MiB':>9} {'RSS MiB':>8} {'s':>6}  statuses")
    for p in result["phases"]:
        row = f"{p['phase']:<52} {p['peak_mib']:>9.1f} {p['rss_mib']:>8.1f} {p['seconds']:>6.1f}"
        print(f"  {row}  {p.get('statuses', '')}")
    print(f"  answers other than the expected 4xx: {len(result['unexpected'])} of {len(result['answers'])} kinds")
    for a in result["answers"]:
        print(f"    {a['status']!s:>3} (expected {a['expected']}) {a['what']}")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    command = " ".join(["bench_hostile.py", *(argv if argv is not None else sys.argv[1:])])
    results: dict[str, object] = {"machine": machine(), "command": command, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.baseline_rev:
            code = export(args.baseline_rev, work / "baseline-code")
            results["runs"].append(run(code, work, f"baseline {args.baseline_rev}", args))
        results["runs"].append(run(REPO, work, "this checkout", args))
    print(f"machine: {results['machine']}")
    for result in results["runs"]:
        report(result)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    return 1 if results["runs"][-1]["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
