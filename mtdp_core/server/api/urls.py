"""The URL table of the local server (moto's "urls"): every route, its methods and its handler.

Paths, methods, query parameters, bodies and status codes are those the official client
(cytomine-python-client 3.0.0, and 4.x for the data API) sends and expects; see
``docs/local_server.md`` for the list. Patterns use Flask's converters (``<int:id>``,
``<any(a,b):name>``); path parameters reach the handler as keyword arguments. Every ``/api``
route needs a signed request; the routes in :data:`PUBLIC_PATHS` do not.

Adding a route: a row here, a handler in ``handlers/<domain>.py`` (request in, backend call,
serialised answer out), the backend method it calls, and a line in docs/local_server.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from werkzeug.routing import BaseConverter

from mtdp_core.server.api.handlers import (
    annotation_terms,
    annotations,
    images,
    jobs,
    meta,
    ontologies,
    pixels,
    projects,
    server,
    software,
    users,
)
from mtdp_core.server.domain import CLASS_NAMES


@dataclass(frozen=True)
class Route:
    """``methods`` (space-separated) on ``pattern`` are answered by ``handler(ctx, **path parameters)``;
    an ``upload`` route takes a file (up to ``max_upload_bytes``, streamed to disk), any other a body
    of at most ``max_body_bytes``."""

    methods: str
    pattern: str
    handler: Callable[..., Any]
    upload: bool = False


PUBLIC_PATHS = frozenset({"/server/ping", "/server/ping.json", "/api/server/ping.json"})

# Path pieces used by several rows.
ANNOTATION = "<any(annotation,userannotation,algoannotation,reviewedannotation):domain>/<int:annotation_id>"
NEW_ANNOTATION = "<any(annotation,userannotation,algoannotation):domain>"
DOMAIN = "domain/<cls>/<int:ident>"  # attached files and description of any object
OWNER = "<owner:cls>/<int:ident>"  # properties: DOMAIN, or a shortcut (see OwnerConverter)
WINDOW = "<int(signed=True):x>-<int(signed=True):y>-<int:w>-<int:h>.<fmt>"
TERM = "annotation/<int:annotation_id>/term/<int:term_id>"

ROUTES: list[Route] = [
    # server and users
    Route("GET POST", "/server/ping", server.ping),
    Route("GET POST", "/server/ping.json", server.ping),
    Route("GET POST", "/api/server/ping.json", server.ping),
    Route("GET", "/api/user/current.json", users.current),
    Route("GET", "/api/user.json", users.list_users),
    Route("POST", "/api/user.json", users.add_user),
    Route("GET", "/api/user/<int:user_id>.json", users.get_user),
    Route("GET", "/api/userJob/<int:user_id>.json", users.get_user),
    Route("GET", "/api/userjob/<int:user_id>.json", users.get_user),
    Route("PUT", "/api/user/<int:user_id>.json", users.update_user),
    Route("GET", "/api/user/<int:user_id>/keys.json", users.user_keys),
    Route("GET", "/api/userkey/<public_key>/keys.json", users.user_keys_by_public_key),
    Route("GET", "/api/project/<int:project_id>/user.json", users.project_users),
    Route("GET", "/api/project/<int:project_id>/admin.json", users.project_admins),
    Route("GET", "/api/project/<int:project_id>/userjob.json", users.project_job_users),
    Route("POST DELETE", "/api/project/<int:project_id>/user/<int:user_id>.json", users.project_member),
    Route("POST DELETE", "/api/project/<int:project_id>/user/<int:user_id>/admin.json", users.project_manager),
    # ontologies and terms
    Route("GET", "/api/ontology.json", ontologies.list_ontologies),
    Route("POST", "/api/ontology.json", ontologies.add_ontology),
    Route("GET", "/api/ontology/<int:ontology_id>.json", ontologies.get_ontology),
    Route("PUT", "/api/ontology/<int:ontology_id>.json", ontologies.update_ontology),
    Route("DELETE", "/api/ontology/<int:ontology_id>.json", ontologies.delete_ontology),
    Route("GET", "/api/term.json", ontologies.list_terms),
    Route("POST", "/api/term.json", ontologies.add_term),
    Route("GET", "/api/ontology/<int:ontology_id>/term.json", ontologies.ontology_terms),
    Route("GET", "/api/project/<int:project_id>/term.json", ontologies.project_terms),
    Route("GET", "/api/term/<int:term_id>.json", ontologies.get_term),
    Route("PUT", "/api/term/<int:term_id>.json", ontologies.update_term),
    Route("DELETE", "/api/term/<int:term_id>.json", ontologies.delete_term),
    # projects
    Route("GET", "/api/project.json", projects.list_projects),
    Route("POST", "/api/project.json", projects.add_project),
    Route("GET", "/api/user/<int:user_id>/project.json", projects.user_projects),
    Route("GET", "/api/ontology/<int:ontology_id>/project.json", projects.ontology_projects),
    Route("GET", "/api/software/<int:software_id>/project.json", projects.software_projects),
    Route("GET", "/api/project/<int:project_id>.json", projects.get_project),
    Route("PUT", "/api/project/<int:project_id>.json", projects.update_project),
    Route("DELETE", "/api/project/<int:project_id>.json", projects.delete_project),
    # images
    Route("GET", "/api/project/<int:project_id>/imageinstance.json", images.project_images),
    Route("GET", "/api/user/<int:user_id>/imageinstance.json", images.user_images),
    Route("POST", "/api/imageinstance.json", images.add_image),
    Route("GET", "/api/imageinstance/<int:image_id>.json", images.get_image),
    Route("DELETE", "/api/imageinstance/<int:image_id>.json", images.delete_image),
    Route("GET", "/api/abstractimage.json", images.list_abstract_images),
    Route("GET", "/api/abstractimage/<int:abstract_id>.json", images.get_abstract_image),
    Route("GET", "/api/imageinstance/<int:image_id>/sliceinstance/reference.json", images.reference_slice),
    Route("GET", "/api/imageinstance/<int:image_id>/sliceinstance.json", images.image_slices),
    Route("GET", "/api/sliceinstance/<int:slice_id>.json", images.get_slice),
    # pixels
    Route("GET POST", "/api/imageinstance/<int:image_id>/thumb.<fmt>", pixels.image_thumb),
    Route("GET POST", "/api/imageinstance/<int:image_id>/preview.<fmt>", pixels.image_preview),
    Route("GET POST", "/api/abstractimage/<int:abstract_id>/thumb.<fmt>", pixels.abstract_thumb),
    Route("GET POST", f"/api/imageinstance/<int:image_id>/window-{WINDOW}", pixels.image_window),
    Route("GET POST", f"/api/imageinstance/<int:image_id>/camera-{WINDOW}", pixels.image_window),
    Route("GET POST", "/api/imageinstance/<int:image_id>/crop.<fmt>", pixels.image_crop),
    Route(
        "GET",
        "/api/sliceinstance/<int:slice_id>/normalized-tile/zoom/<int:z>/tx/<int:tx>/ty/<int:ty>.<fmt>",
        pixels.slice_tile,
    ),
    Route("GET", "/api/imageinstance/<int:image_id>/download", pixels.download_image),
    Route("GET", "/api/abstractimage/<int:abstract_id>/download", pixels.download_abstract_image),
    Route("GET POST", f"/api/{ANNOTATION}/<any(crop,mask,alphamask):crop>.<fmt>", pixels.annotation_crop),
    # annotations
    Route("GET", "/api/annotation.json", annotations.search),
    Route("GET POST", "/api/annotation/search.json", annotations.search),
    Route("GET", "/api/imageinstance/<int:image_id>/annotation/included.json", annotations.included),
    Route("POST", f"/api/{NEW_ANNOTATION}.json", annotations.add),
    Route("GET", f"/api/{ANNOTATION}.json", annotations.get),
    Route("PUT", f"/api/{ANNOTATION}.json", annotations.update),
    Route("DELETE", f"/api/{ANNOTATION}.json", annotations.delete),
    # terms of annotations, reviews
    Route("GET", "/api/annotation/<int:annotation_id>/term.json", annotation_terms.list_terms),
    Route("GET", "/api/annotation/<int:annotation_id>/user/<int:user_id>/term.json", annotation_terms.list_terms),
    Route("POST", f"/api/{TERM}.json", annotation_terms.add_term),
    Route("POST", f"/api/{TERM}/clearBefore.json", annotation_terms.replace_terms),
    Route("GET", f"/api/{TERM}.json", annotation_terms.get_term),
    Route("GET", f"/api/{TERM}/user/<int:user_id>.json", annotation_terms.get_term),
    Route("DELETE", f"/api/{TERM}.json", annotation_terms.delete_term),
    Route("DELETE", f"/api/{TERM}/user/<int:user_id>.json", annotation_terms.delete_term),
    Route("POST PUT", "/api/annotation/<int:annotation_id>/review.json", annotation_terms.review),
    Route("DELETE", "/api/annotation/<int:annotation_id>/review.json", annotation_terms.unreview),
    # properties, attached files, descriptions
    Route("GET", f"/api/{OWNER}/property.json", meta.list_properties),
    Route("POST", f"/api/{OWNER}/property.json", meta.add_property),
    Route("GET", f"/api/{OWNER}/property/<int:property_id>.json", meta.get_property),
    Route("PUT", f"/api/{OWNER}/property/<int:property_id>.json", meta.update_property),
    Route("DELETE", f"/api/{OWNER}/property/<int:property_id>.json", meta.delete_property),
    Route("GET", f"/api/{OWNER}/key/<key>/property.json", meta.property_by_key),
    Route("GET", "/api/property/<int:property_id>.json", meta.get_property_by_id),
    Route("POST", "/api/attachedfile.json", meta.add_attached_file, upload=True),
    Route("GET", "/api/attachedfile.json", meta.list_all_attached_files),
    Route("GET", f"/api/{DOMAIN}/attachedfile.json", meta.list_attached_files),
    Route("GET", "/api/attachedfile/<int:file_id>.json", meta.get_attached_file),
    Route("DELETE", "/api/attachedfile/<int:file_id>.json", meta.delete_attached_file),
    Route("GET", "/api/attachedfile/<int:file_id>/download", meta.download_attached_file),
    Route("GET", f"/api/{DOMAIN}/description.json", meta.get_description),
    Route("POST PUT", f"/api/{DOMAIN}/description.json", meta.set_description),
    Route("DELETE", f"/api/{DOMAIN}/description.json", meta.delete_description),
    # software
    Route("GET", "/api/software.json", software.list_software),
    Route("POST", "/api/software.json", software.add_software),
    Route("GET", "/api/project/<int:project_id>/software.json", software.list_software),
    Route("GET", "/api/software/<int:software_id>.json", software.get_software),
    Route("PUT", "/api/software/<int:software_id>.json", software.update_software),
    Route("DELETE", "/api/software/<int:software_id>.json", software.delete_software),
    Route("GET", "/api/software/<int:software_id>/software_parameter.json", software.list_parameters),
    Route("GET", "/api/software/<int:software_id>/softwareparameter.json", software.list_parameters),
    Route("GET", "/api/software/<int:software_id>/parameter.json", software.list_parameters),  # 2.x clients
    Route("POST", "/api/software_parameter.json", software.add_parameter),
    Route("POST", "/api/softwareparameter.json", software.add_parameter),
    Route("GET", "/api/software_parameter/<int:parameter_id>.json", software.get_parameter),
    Route("GET", "/api/softwareparameter/<int:parameter_id>.json", software.get_parameter),
    Route("PUT", "/api/software_parameter/<int:parameter_id>.json", software.update_parameter),
    Route("PUT", "/api/softwareparameter/<int:parameter_id>.json", software.update_parameter),
    Route("DELETE", "/api/software_parameter/<int:parameter_id>.json", software.delete_parameter),
    Route("DELETE", "/api/softwareparameter/<int:parameter_id>.json", software.delete_parameter),
    Route("POST", "/api/softwareproject.json", software.add_to_project),
    Route("GET", "/api/softwareproject.json", software.project_links),
    Route("GET", "/api/project/<int:project_id>/softwareproject.json", software.project_links),
    Route("GET", "/api/softwareproject/<int:link_id>.json", software.get_link),
    Route("DELETE", "/api/softwareproject/<int:link_id>.json", software.remove_link),
    # jobs, job parameters, job data
    Route("GET", "/api/job.json", jobs.list_jobs),
    Route("POST", "/api/job.json", jobs.add_job),
    Route("GET", "/api/project/<int:project_id>/job.json", jobs.list_jobs),
    Route("GET", "/api/job/<int:job_id>.json", jobs.get_job),
    Route("PUT", "/api/job/<int:job_id>.json", jobs.update_job),
    Route("DELETE", "/api/job/<int:job_id>.json", jobs.delete_job),
    Route("POST", "/api/job/<int:job_id>/execute.json", jobs.execute_job),
    Route("POST", "/api/job/<int:job_id>/kill.json", jobs.kill_job),
    Route("GET", "/api/job/<int:job_id>/parameter.json", jobs.list_parameters),
    Route("GET", "/api/job/<int:job_id>/jobparameter.json", jobs.list_parameters),
    Route("POST", "/api/jobparameter.json", jobs.add_parameters),
    Route("GET", "/api/jobparameter/<int:jp_id>.json", jobs.get_parameter),
    Route("POST", "/api/jobdata.json", jobs.add_data),
    Route("GET", "/api/job/<int:job_id>/jobdata.json", jobs.list_data),
    Route("GET", "/api/jobdata/<int:data_id>.json", jobs.get_data),
    Route("DELETE", "/api/jobdata/<int:data_id>.json", jobs.delete_data),
    Route("POST", "/api/jobdata/<int:data_id>/upload", jobs.upload_data, upload=True),
    Route("GET", "/api/jobdata/<int:data_id>/download", jobs.download_data),
]


#: The class name each property shortcut stands for (``annotation``: any annotation kind).
OWNER_SHORTCUTS = {
    "annotation": "be.cytomine.ontology.AnnotationDomain",
    "project": CLASS_NAMES["project"],
    "imageinstance": CLASS_NAMES["imageinstance"],
}


class OwnerConverter(BaseConverter):
    """The object properties hang on: ``domain/{class name}``, or the shortcuts ``annotation``
    (any annotation kind), ``project`` and ``imageinstance``; the handler gets the class name."""

    regex = r"domain/[^/]+|annotation|project|imageinstance"
    part_isolating = False  # "domain/{class}" spans two path segments

    def to_python(self, value: str) -> str:
        return value.removeprefix("domain/") if value.startswith("domain/") else OWNER_SHORTCUTS[value]


#: Converters the patterns use beyond Flask's own.
CONVERTERS = {"owner": OwnerConverter}
