"""Slide demo: classify the tissue of a real whole-slide image and paint the map over it.

No model ships with mtdp, so the demo first trains a quick one, then runs the slide command:

1. ``mtdp probe``: a logistic-regression probe on EfficientNet-Lite0 ImageNet features of the
   70 colorectal tissue tiles of ``../shared/data/mini/nct_crc_he`` (7 classes: adipose,
   lymphocytes, mucus, muscle, normal mucosa, stroma, tumour; NCT-CRC-HE-100K, 224 px at
   0.5 µm/px), recording that resolution in the model (``--mpp 0.5``); logistic regression
   rather than the paper's SVM so that the map shows probabilities;
2. ``mtdp slides classify``: the real Aperio slide ``../shared/data/wsi/CMU-1-Small-Region.svs``
   (0.499 µm/px) tiled over its tissue at the model's 0.5 µm/px, every tile classified, and
   GeoJSON (QuPath), CSV, overlay picture and summary written to ``OUTPUT/slides``.

Ten training tiles per class and a tissue from another organ: the map shows the mechanics,
not a diagnosis. CPU only, well under a minute on an idle 2-core machine.

    python demo/slide_demo.py [--output demo-output] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("mtdp.demo")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output", type=Path, default=ROOT / "demo-output", help="output folder (default: demo-output)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("MTDP_SHARED_DATA", ROOT.parent / "shared" / "data")),
        help="the shared data folder (default: $MTDP_SHARED_DATA or ../shared/data)",
    )
    parser.add_argument("--overlay", default="classes", help="classes, or a class name (e.g. TUM) for its probability")
    return parser


def class_folders(source: Path, target: Path) -> Path:
    """NCT tiles are named CLASS___id.jpg: copy them into target/CLASS/ for `mtdp probe`."""
    if target.exists():
        shutil.rmtree(target)
    for path in sorted(source.glob("*___*.jpg")):
        folder = target / path.name.split("___")[0]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    return target


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from mtdp_core.cli import main as mtdp
    from mtdp_core.logs import configure_logging

    configure_logging()
    tiles, slide = args.data / "mini" / "nct_crc_he", args.data / "wsi" / "CMU-1-Small-Region.svs"
    if not tiles.is_dir() or not slide.is_file():
        logger.error("the demo needs %s and %s: give the shared data folder with --data", tiles, slide)
        return 2
    output = args.output.resolve() / "slides"
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train = class_folders(tiles, output / "nct_crc_he")
    model = output / "nct-probe.npz"
    commands = [
        ["probe", str(train), "-o", str(model), "--backbone", "efficientnet_lite0", "--weights", "imagenet"]
        + ["--kind", "logreg", "--mpp", "0.5", "--no-progress"],
        ["slides", "classify", str(model), str(slide), "-o", str(output), "--overlay", args.overlay, "--no-progress"],
    ]
    for command in commands:
        logger.info("mtdp %s", " ".join(command))
        code = mtdp(command)
        if code:
            return code
    overlay = output / f"{slide.stem}-overlay.png"
    print(f"\nslide map in {time.perf_counter() - start:.0f} s: {overlay}")
    print(f"QuPath: open {slide}, then File > Import objects from file > {output / (slide.stem + '.geojson')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
