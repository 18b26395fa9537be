"""Errors of the Cytomine / BIAFLOWS apps.

Their messages become a job's status comment, of which Cytomine shows the first 255
characters: so they **lead with the fix**, then say what was wrong and the offending value
(``"Select annotations of at least two terms: only 'tumour' (8 annotations) matches ..."``).
"""

from __future__ import annotations

from mtdp_core.errors import ConfigurationError, MtdpError

#: What Cytomine keeps of a job's status comment.
STATUS_COMMENT_LIMIT = 255


def fit_comment(text: str, limit: int = STATUS_COMMENT_LIMIT) -> str:
    """``text`` on one line, cut to ``limit`` characters (with an ellipsis when cut)."""
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1].rstrip() + "…"


class CytomineAppError(MtdpError):
    """A failure of an app that the user can fix; the message leads with the fix."""


class ParameterError(CytomineAppError, ConfigurationError):
    """A job parameter (or command-line flag) has an invalid value."""


class CytomineConnectionError(CytomineAppError):
    """The server cannot be reached, refuses the keys, or lacks the project or software."""


class CytomineRequestError(CytomineAppError):
    """A request failed (after retries where that is safe). ``status`` is the HTTP status, or
    None when no response came back (connection error, timeout)."""

    def __init__(self, message: str, *, status: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status in (408, 429)


class NoAnnotationsError(CytomineAppError):
    """No annotation matches the filters."""


class MissingTermError(CytomineAppError):
    """A training annotation has no term (or several candidate terms)."""


class TooFewClassesError(CytomineAppError):
    """The training annotations have fewer than two classes."""


class CropDownloadError(CytomineAppError):
    """Too many crops could not be downloaded (or read) to go on."""


class ModelJobError(CytomineAppError):
    """The job given as the model's source does not exist or has no model attached."""


class BackboneMismatchError(CytomineAppError):
    """The backbone asked for differs from the one the model was trained with."""


class PushError(CytomineAppError):
    """Predictions could not all be pushed to the server (a re-run completes them)."""


class LocalDataError(CytomineAppError):
    """A BIAFLOWS / local-mode input folder is missing or badly laid out."""


class OutputFolderError(CytomineAppError):
    """The output folder cannot be created or written by the user the app runs as."""
