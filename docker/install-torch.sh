#!/bin/sh
# Install the torch pair of requirements/torch.txt (the Dockerfile's torch stage), then check that
# what got installed is the build that was asked for: never a silent fallback to another one.
#
#   TORCH=cuda  (default) PyPI's build: CUDA libraries as nvidia-* wheels, ~6 GB; runs on CPUs too.
#   TORCH=cpu   the +cpu builds from TORCH_INDEX_URL (default https://download.pytorch.org/whl/cpu):
#               no CUDA, no nvidia-* or triton; fails when that index cannot be reached.
#   TORCH_INDEX_URL  where torch and torchvision come from (a mirror of PyTorch's index). PyPI is
#               only an extra index for their pure-Python dependencies.
#   WHEELS      a wheel folder (default /wheels: podman/docker build --build-context wheels=DIR): when
#               it holds wheels, pip installs from it alone (--no-index), so nothing is downloaded.
#
# Usage: install-torch.sh REQUIREMENTS_FILE
set -eu
requirements=$1
torch=${TORCH:-cuda}
index=${TORCH_INDEX_URL:-}
case $torch in
  cuda) suffix="" ;;
  cpu) suffix="+cpu"; index=${index:-https://download.pytorch.org/whl/cpu} ;;
  *) echo "TORCH=$torch: choose cuda (PyPI's build, default) or cpu (--build-arg TORCH=cpu)" >&2; exit 2 ;;
esac
pins=$(sed -n "s/^\(torch[a-z]*==[0-9.]*\)\$/\1$suffix/p" "$requirements")
[ -n "$pins" ] || { echo "no torch pins found in $requirements" >&2; exit 2; }

wheels=${WHEELS:-/wheels}
if ls "$wheels"/*.whl >/dev/null 2>&1; then
  source="the wheel folder (--no-index)"
  set -- --no-index --find-links "$wheels"
elif [ -n "$index" ]; then
  source="$index"
  set -- --index-url "$index" --extra-index-url https://pypi.org/simple
else
  source="PyPI"
  set --
fi
echo "installing $(echo $pins) ($torch) from $source"
# shellcheck disable=SC2086  # $pins: one word per requirement
if ! pip install --no-cache-dir "$@" $pins; then
  echo "TORCH=$torch: pip could not install $(echo $pins) from $source. Give a reachable mirror" \
    "(--build-arg TORCH_INDEX_URL=...) or a wheel folder that has them (--build-context wheels=DIR)." >&2
  exit 1
fi

# What was installed, against what was asked.
python - "$torch" <<'PY'
import sys
from importlib import metadata

import torch

want = sys.argv[1]
gpu_libraries = sorted(
    dist.metadata["Name"]
    for dist in metadata.distributions()
    if dist.metadata["Name"].lower().startswith(("nvidia-", "triton", "cuda-"))
)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU libraries: {', '.join(gpu_libraries) or 'none'}")
if want == "cpu" and (torch.version.cuda or gpu_libraries):
    sys.exit(f"TORCH=cpu but a CUDA build was installed (torch {torch.__version__}; {', '.join(gpu_libraries)}).")
if want == "cuda" and not torch.version.cuda:
    sys.exit(f"TORCH=cuda but torch {torch.__version__} has no CUDA: for a CPU image, build with TORCH=cpu.")
PY
