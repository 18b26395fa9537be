"""Build the apps' images and run them in containers against the local Cytomine server.

What a Cytomine processing server does, on this machine: build ``svm_train`` and
``svm_predict`` from the Dockerfile, start the local server (``mtdp_core.server``) on a data
folder, import a small real project (the BCCD sample of the demo), register both descriptors,
launch svm-train then svm-predict with ``podman run --rm --network host IMAGE <the command
line Cytomine builds from the descriptor>``, and check that both jobs end SUCCESS.

    python scripts/container_smoke.py                       # podman, wheels from /opt/pypi-more/files
    python scripts/container_smoke.py --engine docker --no-wheels
    python scripts/container_smoke.py --make-base           # first recreate the python:3.11-slim stand-in

Machines without registry access cannot pull ``python:3.11-slim``: ``--make-base`` builds a
stand-in with debootstrap (Debian bookworm minbase + python3, venv, pip, CA certificates; the
``python``/``pip`` links of the official image; no EXTERNALLY-MANAGED marker) and tags it
``docker.io/library/python:3.11-slim``, so the unmodified Dockerfile builds. It needs root,
debootstrap and a Debian mirror (``--mirror``).

Podman on this kind of machine also needs ``CONTAINERS_CONF`` with ``default_ulimits`` and the
``runc`` runtime (see docs/apps.md); the script sets it to /work/containers/containers.conf
when that file exists and the variable is unset.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

APPS = ("svm_train", "svm_predict")
BASE_TAG = "docker.io/library/python:3.11-slim"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--engine",
        default=os.environ.get("MTDP_CONTAINER_ENGINE", "podman"),
        choices=("podman", "docker"),
        help="container engine (default: podman)",
    )
    parser.add_argument("--tag", default="smoke", help="image tag (default: smoke)")
    parser.add_argument(
        "--wheels",
        default="/opt/pypi-more/files",
        help="folder of wheels (torch, torchvision, nvidia-*) mounted at build time to avoid "
        "downloading them (default: /opt/pypi-more/files)",
    )
    parser.add_argument("--no-wheels", action="store_true", help="download every wheel from the index")
    parser.add_argument("--torch-index-url", default="", help="TORCH_INDEX_URL build argument (e.g. the CPU index)")
    parser.add_argument(
        "--fetch-weights", action="store_true", help="MTDP_FETCH_WEIGHTS=1 (needs network to download.pytorch.org)"
    )
    parser.add_argument("--make-base", action="store_true", help="recreate the python:3.11-slim stand-in first")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror for --make-base")
    parser.add_argument("--skip-build", action="store_true", help="use images already built")
    parser.add_argument("--no-cache", action="store_true", help="build every layer again (measures a full build)")
    parser.add_argument("--images", type=int, default=8, help="BCCD sample images to import (default: 8)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the server's data folder here")
    return parser


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def make_base(engine: str, mirror: str) -> None:
    """The python:3.11-slim stand-in (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,ca-certificates",
                "bookworm",
                str(rootfs),
                mirror,
            ]
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run([engine, "import", "-", "localhost/debian-py311-base:latest"], stdin=tar.stdout)
        tar.wait()
        context = Path(tmp) / "ctx"
        context.mkdir()
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", context / "ca-certificates.crt")
        (context / "Dockerfile").write_text(
            "FROM localhost/debian-py311-base:latest\n"
            "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"
            "RUN ln -sf /usr/bin/python3 /usr/local/bin/python && ln -sf /usr/bin/pip3 /usr/local/bin/pip "
            "&& rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED\n"
            'CMD ["python3"]\n'
        )
        run([engine, "build", "-t", BASE_TAG, str(context)])


def image_name(app: str, tag: str) -> str:
    descriptor = json.loads((ROOT / "descriptors" / f"{app}.json").read_text())
    return f"{descriptor['container-image']['image']}:{tag}"


def build(args: argparse.Namespace) -> dict[str, dict]:
    results = {}
    for app in APPS:
        cmd = [
            args.engine,
            "build",
            "--target",
            app,
            "-t",
            image_name(app, args.tag),
            "--build-arg",
            f"MTDP_FETCH_WEIGHTS={1 if args.fetch_weights else 0}",
        ]
        if args.no_cache and app == APPS[0]:  # the second image reuses the base just rebuilt
            cmd.append("--no-cache")
        if args.torch_index_url:
            cmd += ["--build-arg", f"TORCH_INDEX_URL={args.torch_index_url}"]
        if not args.no_wheels and Path(args.wheels).is_dir():
            if args.engine == "podman":
                cmd += ["-v", f"{args.wheels}:/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/wheels"]
            else:
                print("docker build cannot mount a wheel folder: downloading wheels", flush=True)
        start = time.perf_counter()
        run(cmd + [str(ROOT)])
        seconds = time.perf_counter() - start
        size = subprocess.run(
            [args.engine, "image", "inspect", "--format", "{{.Size}}", image_name(app, args.tag)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        results[app] = {
            "image": image_name(app, args.tag),
            "build_seconds": round(seconds, 1),
            "size_bytes": int(size),
            "size_gb": round(int(size) / 1e9, 2),
        }
        print(f"built {results[app]['image']} in {seconds:.0f} s, {int(size) / 1e9:.2f} GB", flush=True)
    return results


def smoke(args: argparse.Namespace, data_dir: Path) -> dict:
    from mtdp_core.logs import configure_logging
    from mtdp_core.server import LocalCytomine
    from mtdp_core.server.importers import import_folder

    configure_logging()
    sample = ROOT / "demo" / "data" / "bccd_sample"
    results: dict = {}
    with LocalCytomine(data_dir) as server:
        report = import_folder(server.store, "smoke", sample / "images", sample / "boxes.csv", limit=args.images)
        project = report.project["id"]
        images = sorted(server.store.images.list(project), key=lambda i: i["original_filename"])
        train, held_out = images[: len(images) * 3 // 4], images[len(images) * 3 // 4 :]
        for app in APPS:
            server.register_app(ROOT / "descriptors" / f"{app}.json")
        common = {"image_size": 64, "crop_max_size": 64, "batch_size": 16, "n_workers": 0}
        start = time.perf_counter()
        job = server.launch(
            "svm_train",
            project,
            {**common, "cytomine_id_images": [i["id"] for i in train], "balanced_classes": True},
            runner="container",
            image=image_name("svm_train", args.tag),
            engine=args.engine,
            timeout=1200,
        )
        results["svm_train"] = {
            "job": job["id"],
            "status": job["status"],
            "comment": job["status_comment"],
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"svm_train job {job['id']}: status {job['status']}: {job['status_comment']}", flush=True)
        if job["status"] == 3:
            start = time.perf_counter()
            job2 = server.launch(
                "svm_predict",
                project,
                {
                    "cytomine_id_job": job["id"],
                    "batch_size": 16,
                    "n_workers": 0,
                    "cytomine_id_images": [i["id"] for i in held_out],
                },
                runner="container",
                image=image_name("svm_predict", args.tag),
                engine=args.engine,
                timeout=1200,
            )
            results["svm_predict"] = {
                "job": job2["id"],
                "status": job2["status"],
                "comment": job2["status_comment"],
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(f"svm_predict job {job2['id']}: status {job2['status']}: {job2['status_comment']}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if (
        args.engine == "podman"
        and "CONTAINERS_CONF" not in os.environ
        and Path("/work/containers/containers.conf").is_file()
    ):
        os.environ["CONTAINERS_CONF"] = "/work/containers/containers.conf"
    if args.make_base:
        make_base(args.engine, args.mirror)
    results: dict = {"engine": args.engine, "date": time.strftime("%Y-%m-%d")}
    if not args.skip_build:
        results["build"] = build(args)
    data_dir = args.keep or Path(tempfile.mkdtemp(prefix="mtdp-smoke-"))
    try:
        results["jobs"] = smoke(args, data_dir)
    finally:
        if args.keep is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    jobs = results["jobs"]
    ok = all(jobs.get(app, {}).get("status") == 3 for app in APPS)
    print("container smoke test:", "SUCCESS" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
