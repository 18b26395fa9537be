"""The vocabulary every room of the server shares: rows, Cytomine class names, annotation kinds,
job statuses, and how request values (ids, integers, booleans) are read.

Nothing here touches the database or HTTP; backends, handlers, serialisers, the launcher and
the CLI all speak these words. Every value a request gives is checked here before it
reaches SQLite, the file system or Pillow: a bad one is a 400 that says what to send.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from mtdp_core.server.errors import BadRequest

#: A database row as a dict (column name -> value), plus whatever a backend joins in.
Row = dict[str, Any]

#: A check a backend runs on a row before it writes what concerns it (e.g. the caller's access to
#: its project); raising refuses the write. See ``api.access.project_write_check``.
Check = Callable[[Row], None]

#: Fully qualified class names, as the Grails core writes them in ``class`` fields.
CLASS_NAMES: dict[str, str] = {
    "user": "be.cytomine.security.User",
    "userjob": "be.cytomine.security.UserJob",
    "project": "be.cytomine.project.Project",
    "ontology": "be.cytomine.ontology.Ontology",
    "term": "be.cytomine.ontology.Term",
    "abstractimage": "be.cytomine.image.AbstractImage",
    "imageinstance": "be.cytomine.image.ImageInstance",
    "sliceinstance": "be.cytomine.image.SliceInstance",
    "userannotation": "be.cytomine.ontology.UserAnnotation",
    "algoannotation": "be.cytomine.ontology.AlgoAnnotation",
    "reviewedannotation": "be.cytomine.ontology.ReviewedAnnotation",
    "annotationterm": "be.cytomine.ontology.AnnotationTerm",
    "algoannotationterm": "be.cytomine.ontology.AlgoAnnotationTerm",
    "property": "be.cytomine.meta.Property",
    "attachedfile": "be.cytomine.meta.AttachedFile",
    "description": "be.cytomine.meta.Description",
    "software": "be.cytomine.processing.Software",
    "softwareparameter": "be.cytomine.processing.SoftwareParameter",
    "softwareproject": "be.cytomine.processing.SoftwareProject",
    "job": "be.cytomine.processing.Job",
    "jobparameter": "be.cytomine.processing.JobParameter",
    "jobdata": "be.cytomine.processing.JobData",
}
#: Annotation kinds stored in the ``annotation`` table and their domain names.
ANNOTATION_KINDS = {"user": "userannotation", "algo": "algoannotation", "reviewed": "reviewedannotation"}
#: The route prefixes of annotations and the kind each one restricts to (None: any kind).
ANNOTATION_DOMAINS: dict[str, str | None] = {
    "annotation": None,
    "userannotation": "user",
    "algoannotation": "algo",
    "reviewedannotation": "reviewed",
}

#: Job status codes (Job.groovy).
NOT_LAUNCH, INQUEUE, RUNNING, SUCCESS, FAILED, INDETERMINATE, WAIT, PREVIEWED, KILLED = range(9)
TERMINAL_STATUSES = (SUCCESS, FAILED, INDETERMINATE, KILLED)
STATUS_NAMES = {
    NOT_LAUNCH: "NOT_LAUNCH",
    INQUEUE: "INQUEUE",
    RUNNING: "RUNNING",
    SUCCESS: "SUCCESS",
    FAILED: "FAILED",
    INDETERMINATE: "INDETERMINATE",
    WAIT: "WAIT",
    PREVIEWED: "PREVIEWED",
    KILLED: "KILLED",
}
PARAMETER_TYPES = ("String", "Number", "Boolean", "Date", "Domain", "ListDomain", "List")


def now_ms() -> int:
    return int(time.time() * 1000)


def domain_key(class_name: str) -> str:
    """``be.cytomine.domain.processing.Job`` / ``be.cytomine.processing.Job`` / ``job`` -> ``job``."""
    return class_name.rsplit(".", 1)[-1].lower().replace("_", "")


def short_class(class_name: str) -> str:
    """``be.cytomine.project.Project`` -> ``Project`` (for messages)."""
    return class_name.rsplit(".", 1)[-1]


def parse_id_list(value: object) -> list[int] | None:
    """``"1,2"``, ``"1_2"``, ``[1, 2]`` or ``5`` -> ``[1, 2]``/``[5]``; empty or None -> None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(f"Invalid identifier list {value!r}")
    if isinstance(value, int):
        return [check_range(value, "identifier")]
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        text = str(value).strip()
        if not text or text.lower() == "null":
            return None
        items = text.replace("_", ",").split(",")
    try:
        ids = [int(item) for item in items if str(item).strip()]
    except ValueError:
        raise BadRequest(f"Invalid identifier list {str(value)[:60]!r}: use comma-separated integers") from None
    return [check_range(i, "identifier") for i in ids] or None


#: Integers the database stores: SQLite's signed 64 bits.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: The longest file name most file systems accept, in bytes (UTF-8).
MAX_NAME_BYTES = 255


def check_range(value: int, name: str) -> int:
    """``value`` when SQLite can store it; 400 otherwise (ids and numbers are below 2^63)."""
    if not INT_MIN <= value <= INT_MAX:
        raise BadRequest(f"Invalid {name} {str(value)[:30]}: identifiers and integers must be below 2^63")
    return value


def file_name(value: object, fallback: str) -> str:
    """The name a file is stored and served under: the base name of an uploaded path (as Cytomine
    keeps it), or ``fallback`` when none is given; 400 for a name no file can have (``.``, ``..``,
    control characters such as NUL or CR/LF, more than 255 bytes)."""
    if value is None or value == "":
        return fallback
    name = os.path.basename(str(value).replace("\\", "/"))
    if (
        name in ("", ".", "..")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    ):
        raise BadRequest(
            f"Invalid file name {str(value)[:60]!r}: give a plain file name (not '.' or '..', no control "
            f"characters), at most {MAX_NAME_BYTES} bytes"
        )
    return name


def id_union(params: dict[str, Any], *names: str) -> list[int]:
    """The ids of several parameters that mean the same (``term`` and ``terms``), in order."""
    ids: list[int] = []
    for name in names:
        ids += parse_id_list(params.get(name)) or []
    return ids


def as_int(value: object, name: str, *, default: int | None = None) -> int | None:
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "null"):
        return default
    if isinstance(value, bool):
        raise BadRequest(f"Invalid {name} {value!r}: an integer is expected")
    try:
        return check_range(int(value), name)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        try:
            as_float = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BadRequest(f"Invalid {name} {str(value)[:60]!r}: an integer is expected") from None
        if not as_float.is_integer():
            raise BadRequest(f"Invalid {name} {str(value)[:60]!r}: an integer is expected") from None
        return check_range(int(as_float), name)


def required_ids(data: dict[str, Any], *names: str, missing: str) -> list[int]:
    """The integer values of ``names`` in ``data``; 400 with the message ``missing`` when one is absent."""
    ids = [as_int(data.get(name), name) for name in names]
    if any(i is None for i in ids):
        raise BadRequest(missing)
    return ids  # type: ignore[return-value]


def as_bool(value: object, default: bool = False) -> bool:
    """Case-insensitive booleans, as the client sends ``True``/``False``."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def require_name(value: object, what: str) -> str:
    """A non-empty name, stripped; 400 otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"Invalid {what} name {value!r}: give a non-empty name")
    return value.strip()


def parameter_type(value: object) -> str | None:
    """The software router's normalisation of a parameter type (lower-case, capitalise,
    ``Listdomain`` -> ``ListDomain``); None when it is not one of :data:`PARAMETER_TYPES`."""
    if not isinstance(value, str) or not value.strip():
        return None
    normalised = value.strip().lower().capitalize()
    normalised = "ListDomain" if normalised == "Listdomain" else normalised
    return normalised if normalised in PARAMETER_TYPES else None


def parameter_text(value: object) -> str | None:
    """A parameter value as the core stores it (a string; booleans as Java prints them)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(parameter_text(v) or "" for v in value)
    return str(value)


def check_parameter_value(parameter: Row, text: str | None) -> None:
    """Refuse a job parameter value its software parameter's type does not allow, as the web UI does,
    and any value with a space: the core splits the command line on spaces, so such a value would
    reach the app as extra arguments (e.g. another ``--cytomine_host``)."""
    if not text:
        return
    name, ptype = parameter["name"], parameter["type"]
    try:
        if ptype == "Number":
            float(text)
        elif ptype == "Domain":
            int(text)
        elif ptype == "ListDomain":
            [int(v) for v in text.split(",")]
        elif ptype == "Boolean" and text.lower() not in ("true", "false"):
            raise ValueError
    except ValueError:
        raise BadRequest(f"Invalid value {text[:60]!r} for {ptype} parameter {name!r}: give a {ptype} value") from None
    if any(c.isspace() for c in text):
        raise BadRequest(
            f"Value {text[:60]!r} of parameter {name!r} contains a space: Cytomine splits the command "
            "line on spaces, use commas or no spaces"
        )
