"""Build demo/data/bccd_sample/ from the BCCD dataset (../shared/data/bccd): the demo's data.

Deterministic: the first 48 images (by name) that have at least one white blood cell (WBC)
and one platelet, with all their WBC and platelet boxes and up to 4 red blood cell (RBC)
boxes each (BCCD has ~13 RBC per image: keeping them all would make the demo slower and
its classes far less balanced). Images are copied byte for byte.

    python demo/make_sample.py [--bccd ../shared/data/bccd]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo" / "data" / "bccd_sample"
N_IMAGES = 48
MAX_RBC = 4


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--bccd",
        type=Path,
        default=Path(os.environ.get("MTDP_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bccd",
        help="the BCCD folder (JPEGImages/, boxes.csv)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    rows = list(csv.DictReader(open(args.bccd / "boxes.csv", newline="")))
    by_image: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if int(row["xmax"]) > int(row["xmin"]) and int(row["ymax"]) > int(row["ymin"]):
            by_image[row["filename"]].append(row)
    chosen = [name for name in sorted(by_image) if {"WBC", "Platelets"} <= {r["cell_type"] for r in by_image[name]}][
        :N_IMAGES
    ]
    if OUT.exists():
        shutil.rmtree(OUT / "images", ignore_errors=True)
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    kept = []
    for name in chosen:
        shutil.copyfile(args.bccd / "JPEGImages" / name, OUT / "images" / name)
        rbc = [r for r in by_image[name] if r["cell_type"] == "RBC"][:MAX_RBC]
        kept += [r for r in by_image[name] if r["cell_type"] != "RBC"] + rbc
    with open(OUT / "boxes.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["filename", "cell_type", "xmin", "xmax", "ymin", "ymax"])
        writer.writeheader()
        writer.writerows(kept)
    with open(OUT / "MANIFEST.tsv", "w") as handle:
        handle.write("path\tsha256\n")
        for name in chosen:
            digest = hashlib.sha256((OUT / "images" / name).read_bytes()).hexdigest()
            handle.write(f"images/{name}\t{digest}\n")
    counts: dict[str, int] = defaultdict(int)
    for r in kept:
        counts[r["cell_type"]] += 1
    print(f"{len(chosen)} images, {len(kept)} boxes: {dict(counts)} -> {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
