"""The slide steps both Cytomine front ends share: the slide-classify app (legacy jobs) and the App
Engine's classify task on a whole image.

Both take the same inputs (``inputs.add_slide_inputs``: ``resolution``, ``slide_mpp``,
``min_tissue``, ``map_as``, ``min_area``, and the runtime inputs); here the resolution of the tiles
is chosen, the tiles are laid over the tissue and classified, and the library's errors are
reworded with the input that fixes them. The library does the rest for both: ``map_pieces`` (the
tiles merged per class, or the tiles), ``overlay``, ``class_shares``; ``cytomine.geometry`` turns
the pieces into Cytomine coordinates.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from shapely.geometry.base import BaseGeometry

from mtdp_core.cytomine.apps.common import model_weights
from mtdp_core.cytomine.errors import CytomineRequestError
from mtdp_core.errors import MissingResolutionError, NoTissueError, RegionOutsideSlideError, SlideReadError

logger = logging.getLogger(__name__)


def tile_resolution(model: Any, args: argparse.Namespace, origin: str) -> Any:
    """Where the tiles are read (a ``mtdp_core.slides.Resolution``): ``resolution``, else the one
    the model was trained at; a clear error without either (``origin`` names the model)."""
    from mtdp_core.slides.reader import Resolution

    if args.resolution:
        asked = Resolution.parse(args.resolution)
        if asked.mpp and model.mpp and not math.isclose(asked.mpp, model.mpp, rel_tol=0.05):
            logger.warning("tiles read at %s, the model was trained at %g µm/px", asked, model.mpp)
        return asked
    if model.mpp:
        return Resolution(mpp=float(model.mpp))
    why = (model.extra.get("source") or {}).get("resolution", {}).get("why")
    raise MissingResolutionError(
        "Set resolution to the µm per pixel (e.g. 0.5) or the magnification (e.g. 20x) the model's training "
        f"images had: {origin} does not record one" + (f" ({why})." if why else ".")
    )


def classify_slide_tiles(
    model: Any,
    slide: Any,
    args: argparse.Namespace,
    device: str,
    resolution: Any,
    *,
    name: str,
    regions: Sequence[BaseGeometry] | None = None,
    note: str = "",
    prepare: Callable[[Any], None] | None = None,
) -> Any:
    """The ``SlideClassification`` of the tissue tiles of ``slide``: the grid of the model's tiles
    at ``resolution`` over the tissue (``min_tissue``; inside ``regions``, image coordinates, when
    given), then ``prepare(grid)`` (the slide app fetches a remote slide's pixels there), then the
    tiles classified with the runtime inputs. ``name`` names the image in messages (``image
    12-case``), ``note`` (how far the run got) follows it."""
    from mtdp_core.slides.classify import classify_tiles
    from mtdp_core.slides.tiles import tile_grid
    from mtdp_core.slides.tissue import TissueDetector

    try:
        grid = tile_grid(
            slide,
            tile_size=model.preprocessing.size,
            resolution=resolution,
            tissue=TissueDetector(),
            min_tissue=args.min_tissue,
            regions=regions,
        )
        if prepare is not None:
            prepare(grid)
    except MissingResolutionError:
        raise MissingResolutionError(
            f"Set slide_mpp (the scan's µm per pixel, e.g. 0.25 at 40x), or give {name} a resolution in "
            f"Cytomine{note}: it records none, needed to read tiles at {resolution}."
        ) from None
    except NoTissueError as exc:
        raise NoTissueError(f"Select images with tissue, or lower min_tissue: {name}{note}: {exc}") from None
    except RegionOutsideSlideError as exc:
        raise RegionOutsideSlideError(f"Draw the regions inside {name}{note}: {exc}") from None
    except CytomineRequestError as exc:
        raise SlideReadError(f"Check {name} on the server{note}: its pixels cannot be read ({exc})") from None
    return classify_tiles(
        model,
        grid,
        slide.info(),
        resolution,
        weights=model_weights(model, args),
        batch_size=args.batch_size,
        num_workers=args.n_workers,
        device=device,
        engine=args.engine,
        progress=False,
    )
