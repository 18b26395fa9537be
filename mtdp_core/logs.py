"""Logging set-up, done once by entry points (the ``mtdp`` command, scripts, apps).

Library modules only call ``logging.getLogger(__name__)``; they never configure handlers.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_DATEFMT = "%H:%M:%S"
_configured = False


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    A plain ``StreamHandler(sys.stderr)`` keeps the stream of the moment it was made: after a
    redirection (an app's log capture, pytest's capsys) it writes to a stale or closed file.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__/setStream assign it: always follow sys.stderr
        pass


def configure_logging(level: int | str | None = None, *, force: bool = False) -> None:
    """Send mtdp logs to stderr with timestamps, once per process.

    ``level`` defaults to ``$MTDP_LOG_LEVEL`` or INFO. A second call only changes the level,
    unless ``force`` is true, so libraries and apps can call it without stacking handlers.
    """
    global _configured
    if level is None:
        level = os.environ.get("MTDP_LOG_LEVEL", "INFO")
    if isinstance(level, str):
        level = level.upper()
    root = logging.getLogger()
    if _configured and not force:
        root.setLevel(level)
        _quiet_chatty_libraries(root.level)
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
    for old in list(root.handlers):
        if getattr(old, "_mtdp", False):
            root.removeHandler(old)
    handler._mtdp = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    _quiet_chatty_libraries(root.level)
    _configured = True


def _quiet_chatty_libraries(level: int) -> None:
    """Third-party libraries that are chatty at INFO log warnings only (the Cytomine client logs
    every request at INFO: a job log or the demo's output would be mostly that; at DEBUG it shows)."""
    # onnxscript / onnx_ir: torch's ONNX exporter logs each of its optimisation passes at INFO.
    for noisy in ("PIL", "matplotlib", "urllib3", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level))
    logging.getLogger("cytomine.client").setLevel(logging.WARNING if level > logging.DEBUG else logging.DEBUG)
