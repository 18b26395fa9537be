"""Typed exceptions of mtdp_core.

Every error a user can cause is one of these. Messages lead with what was wrong and the
offending value, then say how to fix it, and keep the important part within the first 255
characters (what Cytomine shows of a failed job's status comment).
"""

from __future__ import annotations


class MtdpError(Exception):
    """Base class of every error raised on purpose by mtdp_core."""


class ConfigurationError(MtdpError, ValueError):
    """An argument, parameter or configuration value is invalid."""


class UnknownNameError(ConfigurationError):
    """A name (backbone, weight source, ...) is not among the registered ones."""


class WeightsError(MtdpError):
    """Base class of the errors raised while locating or loading weights."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file is not on disk (and nothing is ever downloaded at run time)."""


class ChecksumMismatchError(WeightsError):
    """A file's sha256 differs from the one recorded for it."""


class IncompatibleWeightsError(WeightsError):
    """A checkpoint does not fit the architecture it is loaded into."""


class DataError(MtdpError):
    """A data file (task pool index, manifest, image) is missing, unreadable or malformed."""


class CheckpointError(MtdpError):
    """A training checkpoint is missing, unreadable, or does not match the run resuming from it."""


# --------------------------------------------------------------------------- transfer


class ImageReadError(DataError):
    """An input image cannot be opened or decoded."""


class ModelFileError(MtdpError):
    """A saved classifier file is unreadable, of an unknown format, or fails validation."""


class TamperedModelError(ModelFileError):
    """A saved classifier's content does not match the checksum recorded inside it."""


class IncompatibleModelError(ModelFileError):
    """A saved classifier was made for another backbone, preprocessing or format version."""


# --------------------------------------------------------------------------- inference engines


class EngineError(MtdpError):
    """An inference engine cannot run a backbone (missing runtime, graph, or a failed export)."""


class MissingDependencyError(EngineError, ImportError):
    """A package the asked-for path needs (torch, onnxruntime) is not installed."""


class ExportError(EngineError):
    """A backbone could not be exported to an ONNX graph, or the graph does not reproduce it."""


class GraphNotFoundError(EngineError, FileNotFoundError):
    """No pre-exported graph for a backbone, and no torch here to export one."""


# --------------------------------------------------------------------------- slides


class SlideError(DataError):
    """A whole-slide image cannot be used as asked (base class of the slide errors)."""


class SlideReadError(SlideError, ImageReadError):
    """A slide file cannot be opened or one of its regions cannot be decoded."""


class MissingResolutionError(SlideError, ConfigurationError):
    """A resolution (µm per pixel or magnification) is needed and neither the file nor the user gives one."""


class NoTissueError(SlideError):
    """Tissue detection found nothing to tile on a slide (or inside the regions given)."""


class RegionOutsideSlideError(SlideError, ConfigurationError):
    """A region (ROI, window) lies outside the slide."""
