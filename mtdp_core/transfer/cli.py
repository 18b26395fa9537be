"""``mtdp features``: features of a folder of images, saved for other tools."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from mtdp_core.backbones import create_backbone, list_backbones
from mtdp_core.data.images import RESIZE_MODES, Preprocessing, list_images
from mtdp_core.errors import ConfigurationError
from mtdp_core.transfer.features import extract_features

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "features",
        help="extract features of a folder of images",
        description=(
            "Build a backbone, extract the pooled features of every image under FOLDER and save "
            "them as a .npz file: `features` (n_images, n_features) float32, `paths` (relative to "
            "FOLDER), `labels` (the name of each image's parent folder, for class folders) and "
            "`identity` (JSON: backbone, weights with sha256, preprocessing)."
        ),
    )
    p.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .npz file")
    p.add_argument("--backbone", default="densenet121", help=f"one of: {', '.join(list_backbones())} (default: densenet121)")
    p.add_argument("--weights", default="imagenet", help="imagenet, mtdp, random, ... or a .pth file (default: imagenet)")
    p.add_argument("--size", type=int, default=224, help="input size in pixels (default: 224)")
    p.add_argument("--resize", default="center_crop", choices=RESIZE_MODES, help="how images are brought to size x size")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes that decode images (default: 2)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (default: 0)")
    p.set_defaults(func=_cmd_features)


def _cmd_features(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.workers < 0:
        raise ConfigurationError(f"Invalid --batch-size {args.batch_size} / --workers {args.workers}: use >= 1 and >= 0.")
    paths = list_images(args.folder)
    if not paths:
        raise ConfigurationError(f"No images found under {args.folder}: give a folder with .jpg/.png/.tif files.")
    backbone = create_backbone(args.backbone, weights=args.weights, seed=args.seed)
    prep = Preprocessing.for_backbone(backbone, size=args.size, resize=args.resize)
    start = time.perf_counter()
    feats = extract_features(backbone, paths, prep, batch_size=args.batch_size, num_workers=args.workers, device=args.device)
    elapsed = time.perf_counter() - start
    identity = {**backbone.identity(), "preprocessing": prep.to_dict()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.output,
        features=feats,
        paths=np.array([str(p.relative_to(args.folder)) for p in paths]),
        labels=np.array([p.parent.name for p in paths]),
        identity=np.array(json.dumps(identity)),
    )
    logger.info("%d x %d features -> %s (%.1f images/s)", *feats.shape, args.output, len(paths) / elapsed)
    return 0
