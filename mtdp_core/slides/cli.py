"""``mtdp slides info | preview | classify``: whole-slide images from the command line.

mtdp slides info SLIDE...                                  levels, resolution, magnification
mtdp slides preview SLIDE -o preview.png --model m.npz     tissue mask and tile grid, before classifying
mtdp slides classify MODEL SLIDE_OR_FOLDER... -o OUTDIR    per-tile classes: GeoJSON (QuPath), CSV, overlay
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from mtdp_core.errors import ConfigurationError, SlideError

logger = logging.getLogger(__name__)

HELP = "whole-slide images: info, tissue and tile preview, classify tiles with a saved model"


def register(subparsers: argparse._SubParsersAction) -> None:
    from mtdp_core.transfer.cli import add_runtime_options

    p = subparsers.add_parser(
        "slides",
        help=HELP,
        description=(
            "Whole-slide images (every format OpenSlide reads: Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, "
            "generic tiled TIFF, ...; and plain PNG/JPEG/TIFF images): describe them, preview the tissue and "
            "tile grid, classify their tiles with a model from `mtdp probe` or `mtdp finetune`. See docs/slides.md."
        ),
    )
    sub = p.add_subparsers(dest="slides_command", metavar="SUBCOMMAND", required=True)

    info = sub.add_parser("info", help="levels, size, resolution and magnification of slides")
    info.add_argument("slides", type=Path, nargs="+", help="slide files or folders of slides")
    info.add_argument("--slide-mpp", type=float, default=None, help="µm per pixel of files that lack it")
    info.add_argument("--json", action="store_true", help="print JSON (one object per slide)")
    info.set_defaults(func=_cmd_info)

    pre = sub.add_parser(
        "preview",
        help="picture of the tissue mask and tile grid of a slide",
        description=(
            "Detect the tissue and lay the tile grid as `mtdp slides classify` would, and draw both over the "
            "slide's thumbnail (tissue green, tiles blue). Tile size and resolution come from --model, or "
            "from --tile-size and --resolution."
        ),
    )
    pre.add_argument("slide", type=Path, help="slide file")
    pre.add_argument("-o", "--output", type=Path, required=True, help="picture to write (.png or .jpg)")
    pre.add_argument("--model", type=Path, default=None, help="take tile size and resolution from this model")
    pre.add_argument("--tile-size", type=int, default=224, help="tile side in pixels at the resolution (default: 224)")
    pre.add_argument("--max-side", type=int, default=1024, help="longest side of the picture (default: 1024)")
    _add_grid_options(pre)
    pre.set_defaults(func=_cmd_preview)

    cls = sub.add_parser(
        "classify",
        help="classify the tissue tiles of slides with a saved model",
        description=(
            "Tile the tissue of each slide at the model's training resolution (recorded by `mtdp probe/finetune "
            "--mpp`; or --resolution), classify every tile with the model, and write per slide: "
            "SLIDE.geojson (QuPath: File > Import objects from file; one tile object per tile with its class "
            "and probabilities, and one annotation per class with its tiles merged), SLIDE.csv (one row per "
            "tile), SLIDE-overlay.png (the classes, or one class's probability, over the thumbnail) and "
            "SLIDE.json (what was done). Coordinates are level-0 pixels, origin top-left. Network outputs are "
            "cached under OUTDIR/cache: an interrupted run resumes, a re-run with another probe on the same "
            "backbone reuses the features."
        ),
    )
    cls.add_argument("model", type=Path, help="model file (.npz) from mtdp probe / finetune or a Cytomine job")
    cls.add_argument("slides", type=Path, nargs="+", help="slide files or folders of slides")
    cls.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    cls.add_argument(
        "--weights", default=None, help="the backbone's weights file, for a model trained on features of a local file"
    )
    out = cls.add_argument_group("outputs")
    out.add_argument(
        "--geojson",
        default="both",
        choices=("both", "tiles", "merged", "none"),
        help="tile objects, merged class annotations, both (default) or no GeoJSON",
    )
    out.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        help="drop merged pieces smaller than this, in µm² (level-0 px² for slides without a resolution)",
    )
    out.add_argument(
        "--overlay",
        default="classes",
        metavar="classes|CLASS",
        help="paint the classes (default) or the probability of one class over the thumbnail",
    )
    out.add_argument("--overlay-size", type=int, default=1024, help="longest side of the overlay (default: 1024)")
    out.add_argument("--no-overlay", dest="write_overlay", action="store_false", help="no overlay picture")
    out.add_argument(
        "--color", action="append", default=[], metavar="CLASS=#RRGGBB", help="colour of a class (repeatable)"
    )
    _add_grid_options(cls)
    add_runtime_options(cls, cache=False, gpu_decode=False)  # tiles are read from the slide, not JPEG files
    g = cls.add_argument_group("cache")
    g.add_argument("--cache-dir", type=Path, default=None, help="network output cache (default: OUTDIR/cache)")
    g.add_argument("--no-cache", dest="cache", action="store_false", help="no cache: nothing to resume from")
    cls.set_defaults(func=_cmd_classify)


def _add_grid_options(p: argparse.ArgumentParser) -> None:
    from mtdp_core.slides.tissue import TISSUE_METHODS, TissueDetector

    d = TissueDetector()
    g = p.add_argument_group("tiles")
    g.add_argument(
        "--resolution",
        default=None,
        help="read tiles at this resolution: µm per pixel (0.5) or magnification (20x); default: the model's",
    )
    g.add_argument(
        "--slide-mpp", type=float, default=None, help="µm per level-0 pixel of slides whose files do not record it"
    )
    g.add_argument("--stride", type=int, default=None, help="grid step in tile pixels (default: tile size, no overlap)")
    g.add_argument(
        "--min-tissue", type=float, default=0.5, help="least tissue fraction of a tile, 0 to 1 (default: 0.5)"
    )
    g.add_argument(
        "--regions",
        type=Path,
        default=None,
        help="only tile inside these polygons: a GeoJSON file (QuPath export, level-0 pixels), or a folder with "
        "one SLIDE_STEM.geojson per slide",
    )
    g.add_argument(
        "--min-region", type=float, default=0.5, help="least fraction of a tile inside the regions (default: 0.5)"
    )
    g.add_argument("--edge-tiles", action="store_true", help="also tiles that cross the right or bottom border")
    t = p.add_argument_group("tissue detection")
    t.add_argument("--no-tissue", dest="tissue", action="store_false", help="tile everywhere, no tissue detection")
    t.add_argument(
        "--tissue-method",
        default=d.method,
        choices=TISSUE_METHODS,
        help=f"Otsu on saturation or on grey levels (default: {d.method})",
    )
    t.add_argument(
        "--tissue-threshold",
        type=float,
        default=None,
        help="fixed threshold instead of Otsu's: saturation above / grey level below, 0 to 1",
    )
    t.add_argument(
        "--tissue-min-area",
        type=float,
        default=d.min_area,
        help=f"smallest piece of tissue kept, µm² (default: {d.min_area:g})",
    )
    t.add_argument(
        "--tissue-mpp", type=float, default=d.mpp, help=f"resolution of the tissue mask, µm/px (default: {d.mpp:g})"
    )


def _detector(args: argparse.Namespace):
    from mtdp_core.slides.tissue import TissueDetector

    if not args.tissue:
        return None
    return TissueDetector(
        method=args.tissue_method, threshold=args.tissue_threshold, min_area=args.tissue_min_area, mpp=args.tissue_mpp
    )


def _slide_files(items: list[Path]) -> list[Path]:
    from mtdp_core.slides.reader import FORMATS_HELP, SLIDE_EXTENSIONS

    out: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_EXTENSIONS)
            if not found:
                raise ConfigurationError(f"No slides in {item}: expected files of the {FORMATS_HELP}.")
            out.extend(found)
        elif item.is_file():
            out.append(item)
        else:
            raise ConfigurationError(f"{item} does not exist: give slide files or folders of slides.")
    return out


def load_regions(path: Path) -> list:
    """Polygons of a GeoJSON file (FeatureCollection, Feature, geometry, or a list of features)."""
    import shapely
    from shapely.geometry import shape

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"Cannot read regions from {path} ({exc}): give a GeoJSON file.") from None
    items = data.get("features", [data]) if isinstance(data, dict) else data
    geoms = []
    for item in items if isinstance(items, list) else []:
        geometry = item.get("geometry", item) if isinstance(item, dict) else None
        try:
            geom = shape(geometry)
        except (AttributeError, KeyError, TypeError, ValueError, shapely.errors.GEOSException):
            continue
        if geom.geom_type in ("Polygon", "MultiPolygon") and not geom.is_empty:
            geoms.append(geom)
    if not geoms:
        raise ConfigurationError(
            f"No polygon in {path}: give a GeoJSON FeatureCollection of (multi)polygons in level-0 pixels."
        )
    return geoms


def _regions_for(args: argparse.Namespace, slide_path: Path) -> list | None:
    if args.regions is None:
        return None
    if args.regions.is_dir():
        file = args.regions / f"{slide_path.stem}.geojson"
        if not file.is_file():
            raise ConfigurationError(f"No regions file {file} for slide {slide_path.name}: add it or drop --regions.")
        return load_regions(file)
    return load_regions(args.regions)


# --------------------------------------------------------------------------- commands


def _cmd_info(args: argparse.Namespace) -> int:
    from mtdp_core.slides.reader import open_slide

    for path in _slide_files(args.slides):
        with open_slide(path, mpp=args.slide_mpp) as slide:
            info = slide.info()
        if args.json:
            print(json.dumps(info))
            continue
        mpp = f"{info['mpp']:g} µm/px ({info['mpp_source']})" if info["mpp"] else "unknown (give --slide-mpp)"
        power = f"{info['objective_power']:g}x" if info["objective_power"] else "not recorded"
        print(f"{info['path']}")
        print(f"  format      {info['vendor']} ({info['backend']})")
        print(f"  size        {info['width']} x {info['height']} px")
        print(f"  resolution  {mpp}")
        print(f"  objective   {power}")
        for lv in info["levels"]:
            print(f"  level {lv['level']:<4d}  {lv['width']} x {lv['height']} px, downsample {lv['downsample']:g}")
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    from mtdp_core.slides.outputs import preview
    from mtdp_core.slides.reader import Resolution, open_slide
    from mtdp_core.slides.tiles import tile_grid

    tile_size, resolution = args.tile_size, args.resolution
    if args.model is not None:
        from mtdp_core.transfer.persistence import load_model

        model = load_model(args.model)
        tile_size = model.preprocessing.size
        if resolution is None and model.mpp is not None:
            resolution = Resolution(mpp=model.mpp)
    with open_slide(args.slide, mpp=args.slide_mpp) as slide:
        grid = tile_grid(
            slide,
            tile_size=tile_size,
            resolution=resolution,
            stride=args.stride,
            regions=_regions_for(args, args.slide),
            tissue=_detector(args),
            min_tissue=args.min_tissue,
            min_region=args.min_region,
            edge_tiles=args.edge_tiles,
        )
        picture = preview(slide, grid, max_side=args.max_side)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.output)
    print(f"{args.slide.name}: {grid.describe()} -> {args.output}")
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from mtdp_core.slides.classify import classify_slide
    from mtdp_core.slides.outputs import parse_color
    from mtdp_core.slides.reader import open_slide
    from mtdp_core.transfer.cli import runtime_kwargs
    from mtdp_core.transfer.persistence import load_model

    model = load_model(args.model)
    names = [c.name for c in model.classes]
    colors: dict[str, tuple[int, int, int]] = {}
    for entry in args.color:
        name, sep, value = entry.partition("=")
        if not sep or name not in names:
            raise ConfigurationError(f"Invalid --color {entry!r}: use CLASS=#RRGGBB with CLASS one of {names}.")
        colors[name] = parse_color(value)
    if args.overlay != "classes" and args.overlay not in names:
        raise ConfigurationError(f"Invalid --overlay {args.overlay!r}: use 'classes' or one of {names}.")
    slides = _slide_files(args.slides)
    args.output.mkdir(parents=True, exist_ok=True)
    cache_dir = (args.cache_dir or args.output / "cache") if args.cache else None
    failures: list[tuple[Path, str]] = []
    for path in slides:
        try:
            with open_slide(path, mpp=args.slide_mpp) as slide:
                result = classify_slide(
                    model,
                    slide,
                    resolution=args.resolution,
                    stride=args.stride,
                    regions=_regions_for(args, path),
                    tissue=_detector(args),
                    min_tissue=args.min_tissue,
                    min_region=args.min_region,
                    edge_tiles=args.edge_tiles,
                    weights=args.weights,
                    **runtime_kwargs(args),
                    cache_dir=cache_dir,
                    engine=args.engine,
                )
                written = _write_outputs(args, slide, result, colors)
        except SlideError as exc:
            if len(slides) == 1:
                raise
            logger.error("%s", exc)
            failures.append((path, str(exc)))
            continue
        counts = ", ".join(f"{k} {v}" for k, v in result.counts().items())
        print(f"{path.name}: {len(result.grid)} tiles ({counts}) -> {', '.join(str(p) for p in written)}")
    if failures:
        logger.error("%d of %d slides failed: %s", len(failures), len(slides), ", ".join(p.name for p, _ in failures))
        return 1
    return 0


def _write_outputs(args: argparse.Namespace, slide: Any, result: Any, colors: dict) -> list[Path]:
    from mtdp_core.slides.outputs import class_colors, overlay, write_csv, write_geojson

    stem = args.output / Path(slide.name).stem
    palette = class_colors([c.name for c in result.classes], colors)
    written = [write_csv(result, f"{stem}.csv")]
    if args.geojson != "none":
        written.append(
            write_geojson(
                result,
                f"{stem}.geojson",
                tiles=args.geojson in ("both", "tiles"),
                merged=args.geojson in ("both", "merged"),
                min_area=result.pixel_area(args.min_area),
                colors=palette,
            )
        )
    if args.write_overlay:
        picture = overlay(result, slide, show=args.overlay, max_side=args.overlay_size, colors=palette)
        picture.save(f"{stem}-overlay.png")
        written.append(Path(f"{stem}-overlay.png"))
    summary = {
        "slide": result.slide,
        "model": result.model,
        "grid": {**result.grid.params, "n_tiles": len(result.grid), "tile_mpp": result.grid.mpp},
        "counts": result.counts(),
        "seconds": round(result.seconds, 3),
        "features": {k: v for k, v in result.stats.items() if k != "seconds"},
    }
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=1, default=str))
    written.append(Path(f"{stem}.json"))
    return written
