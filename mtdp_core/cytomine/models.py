"""Models attached to Cytomine jobs: finding and downloading the one a training job produced.

A model file travels through Cytomine as an attached file of its training job. It is only
ever read with ``mtdp_core.transfer.persistence.load_model`` (numbers and JSON, no pickle):
a file from a server is untrusted input.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from mtdp_core.cytomine.client import CytomineSession
from mtdp_core.cytomine.errors import CytomineRequestError, ModelJobError
from mtdp_core.errors import ModelFileError

logger = logging.getLogger(__name__)

JOB_CLASS = "be.cytomine.processing.Job"
STATUS_NAMES = {
    0: "not launched",
    1: "in queue",
    2: "running",
    3: "successful",
    4: "failed",
    5: "indeterminate",
    6: "waiting",
    7: "preview done",
    8: "killed",
}


def download_job_model(
    session: CytomineSession, job_id: int, filename: str, destination: Path
) -> tuple[Path, dict, dict]:
    """Download the file ``filename`` attached to job ``job_id`` (the newest of that name);
    returns (path, job JSON, attached file JSON).

    Raises:
        ModelJobError: the job does not exist, or has no such file (with its status and name).
    """
    try:
        job = session.get_json(f"job/{job_id}.json")
    except CytomineRequestError as exc:
        if exc.status in (403, 404):
            raise ModelJobError(
                f"Give the id of a finished training job of this project as cytomine_id_job: job {job_id} does not "
                f"exist or cannot be read (HTTP {exc.status})."
            ) from None
        raise
    files = session.get_collection(f"domain/{JOB_CLASS}/{job_id}/attachedfile.json")
    matches = [f for f in files if f.get("filename") == filename]
    if not matches:
        status = STATUS_NAMES.get(job.get("status"), str(job.get("status")))
        found = ", ".join(sorted({str(f.get("filename")) for f in files})) or "none"
        raise ModelJobError(
            f"Give the id of a successful training job as cytomine_id_job: job {job_id} ({job.get('softwareName')}, "
            f"{status}) has no {filename} attached (files: {found})."
        )
    newest = max(matches, key=lambda f: int(f.get("id", 0)))
    destination.parent.mkdir(parents=True, exist_ok=True)
    session.download(f"attachedfile/{newest['id']}/download", destination)
    logger.info(
        "model of job %d (%s) downloaded: %s (%d bytes)",
        job_id,
        job.get("softwareName"),
        destination,
        destination.stat().st_size,
    )
    return destination, job, newest


def load_job_model(session: CytomineSession, job_id: int, filename: str, workdir: Path) -> Any:
    """The model attached to job ``job_id`` (a ``SavedModel``), read safely (no pickle).

    Raises:
        ModelJobError: no such job or file, or a file that is not a usable model; the message
            names the job and its attachment, not the temporary copy it was read from.
    """
    from mtdp_core.transfer.persistence import load_model

    path, _, attachment = download_job_model(session, job_id, filename, workdir / filename)
    try:
        return load_model(path)
    except ModelFileError as exc:
        origin = f"the {filename} attached to job {job_id} (attached file {attachment.get('id')})"
        pattern = f"{re.escape(str(path))}|(?:Model file )?{re.escape(path.name)}"
        reason = re.sub(pattern, lambda _match: origin, str(exc))
        if not reason.startswith(origin):
            reason = f"{origin}: {reason}"
        raise ModelJobError(f"Give the id of a training job with a usable model as cytomine_id_job: {reason}") from None
