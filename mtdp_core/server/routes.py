"""HTTP routes and authentication of the local server (moto's "urls" + request handling).

Paths, methods, query parameters, bodies and status codes are those the official client
(cytomine-python-client 3.0.0, and 4.x for the data API) sends and expects; see
``docs/local_server.md`` for the list. Every ``/api`` route needs a signed request
(:mod:`mtdp_core.server.auth`); ``/server/ping`` does not. Success is always HTTP 200 (the
client treats anything else as a failure); errors are JSON with the core's status codes.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import shapely
from flask import Flask, Response, g, request, send_file
from werkzeug.exceptions import HTTPException

from mtdp_core.server import responses as R
from mtdp_core.server.auth import parse_authorization, verify
from mtdp_core.server.config import SERVER_VERSION, ServerConfig
from mtdp_core.server.errors import BadRequest, Forbidden, NotFound, ServerError, Unauthorized
from mtdp_core.server.geometry import parse_bbox, parse_wkt
from mtdp_core.server.imaging import CropOptions, ImageCache, render_crop, render_thumb, render_window
from mtdp_core.server.models import (
    ANNOTATION_KINDS,
    CLASS_NAMES,
    AnnotationQuery,
    CytomineStore,
    Row,
    as_bool,
    as_int,
    parse_id_list,
)

logger = logging.getLogger("mtdp_core.server.requests")

PUBLIC_PATHS = frozenset({"/server/ping", "/server/ping.json", "/api/server/ping.json"})
#: Show-group switches of annotation listings and the groups they select (ParamsService).
SHOW_GROUPS = {
    "showBasic": "basic",
    "showMeta": "meta",
    "showWKT": "wkt",
    "showGIS": "gis",
    "showTerm": "term",
    "showImage": "image",
    "showAlgo": "algo",
    "showUser": "user",
    "showSlice": "slice",
    "showTrack": "track",
    "showImageGroup": "imageGroup",
    "showLink": "group",
}
ANNOTATION_DOMAINS = {
    "annotation": None,
    "userannotation": "user",
    "algoannotation": "algo",
    "reviewedannotation": "reviewed",
}


class Launcher(Protocol):
    def execute(self, job_id: int, base_url: str, *, wait: bool = False) -> Row: ...

    def kill(self, job_id: int) -> Row: ...

    def process_state(self, job_id: int) -> dict[str, Any] | None: ...


@dataclass
class Backend:
    """What the routes work with."""

    store: CytomineStore
    config: ServerConfig
    cache: ImageCache
    launcher: Launcher | None = None


# ---------------------------------------------------------------------- request helpers
def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status=status, mimetype="application/json")


def _body() -> Any:
    """The JSON body; a form-encoded body (some client helpers post dicts that way) as a dict."""
    raw = request.get_data(cache=True)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        # Annotation.review() posts a dict through requests' data=, i.e. form-encoded, under a JSON
        # content type: read it as a form.
        try:
            form = urllib.parse.parse_qs(raw.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("The request body is not valid JSON") from None
        return {key: (values if len(values) > 1 else values[0]) for key, values in form.items()}


def _body_dict() -> dict[str, Any]:
    data = _body()
    if not isinstance(data, dict):
        raise BadRequest("A JSON object is expected in the request body")
    return data


def _arg_int(name: str, default: int | None = None) -> int | None:
    return as_int(request.args.get(name), name, default=default)


def _arg_float(name: str) -> float | None:
    value = request.args.get(name)
    if value in (None, "", "null"):
        return None
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"Invalid {name} {value!r}: a number is expected") from None


def _paging() -> tuple[int, int]:
    offset = _arg_int("offset", 0) or 0
    max_ = _arg_int("max", 0) or 0
    if offset < 0 or max_ < 0:
        raise BadRequest(f"Invalid offset {offset} / max {max_}: use non-negative integers (max=0 means all)")
    return offset, max_


def _page(items: list[Any]) -> Response:
    offset, max_ = _paging()
    return _json(R.collection(items, offset=offset, max_=max_))


def _user() -> Row:
    return g.user


def _require_admin() -> None:
    if not _user()["is_admin"]:
        raise Forbidden(f"User {_user()['username']!r} is not an administrator: use the admin keys")


def _image_response(data: bytes, mime: str) -> Response:
    return Response(data, mimetype=mime)


def create_app(backend: Backend) -> Flask:
    """The Flask application serving ``backend``."""
    app = Flask("mtdp_core.server")
    app.config.update(MAX_CONTENT_LENGTH=None, JSON_SORT_KEYS=False)
    store, config = backend.store, backend.config

    def base_url() -> str:
        return (config.public_url or request.host_url).rstrip("/")

    # ------------------------------------------------------------------ authentication and logging
    @app.before_request
    def authenticate() -> None:
        g.start = time.perf_counter()
        g.user = None
        if request.path in PUBLIC_PATHS:
            return
        credentials = parse_authorization(request.headers.get("authorization"))
        if credentials is None:
            raise Unauthorized(
                "Authentication required: sign the request with your API keys "
                "(header 'authorization: CYTOMINE <public key>:<signature>')"
            )
        public_key, received = credentials
        user = store.find_user_by_public_key(public_key)
        if user is None:
            raise Unauthorized(
                f"Unknown public key {public_key[:8]}...: use the keys printed by 'mtdp server serve' "
                "or created by 'mtdp server user add'"
            )
        path_and_query = request.environ.get("RAW_URI") or request.full_path.rstrip("?")
        if not verify(
            user["private_key"],
            received,
            method=request.method,
            content_md5=request.headers.get("content-md5", ""),
            content_type=request.headers.get("content-type", ""),
            date=request.headers.get("date", ""),
            path_and_query=path_and_query,
        ):
            raise Unauthorized("Bad request signature: check the private key and the 'date' header")
        g.user = user

    @app.after_request
    def finish(response: Response) -> Response:
        # The client mounts CacheControl: validators or max-age would make it serve stale data.
        for header in ("ETag", "Last-Modified", "Cache-Control", "Expires"):
            response.headers.pop(header, None)
        if config.log_requests:
            elapsed = (time.perf_counter() - getattr(g, "start", time.perf_counter())) * 1000
            who = g.user["username"] if getattr(g, "user", None) else "-"
            target = request.full_path.rstrip("?")
            logger.info("%s %s %d %s %.1fms", request.method, target[:200], response.status_code, who, elapsed)
        return response

    @app.errorhandler(ServerError)
    def server_error(exc: ServerError) -> Response:
        return _json(R.error(exc.message, exc.status), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        message = f"{exc.name}: {request.method} {request.path}" if exc.code in (404, 405) else str(exc.description)
        return _json(R.error(message, exc.code or 500), exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("internal error on %s %s", request.method, request.path)
        return _json(R.error(f"Internal server error: {type(exc).__name__}: {exc}", 500), 500)

    _register_server_and_users(app, backend, base_url)
    _register_ontology_and_projects(app, backend)
    _register_images(app, backend, base_url)
    _register_annotations(app, backend, base_url)
    _register_meta(app, backend, base_url)
    _register_software_and_jobs(app, backend, base_url)
    return app


# ---------------------------------------------------------------------- users
def _register_server_and_users(app: Flask, backend: Backend, base_url: Callable[[], str]) -> None:
    store = backend.store

    @app.route("/server/ping", methods=["GET", "POST"])
    @app.route("/server/ping.json", methods=["GET", "POST"])
    @app.route("/api/server/ping.json", methods=["GET", "POST"])
    def ping() -> Response:
        return _json(
            {
                "alive": True,
                "authenticated": False,
                "version": SERVER_VERSION,
                "serverURL": base_url(),
                "serverID": "mtdp-local",
            }
        )

    def user_json(row: Row, current: bool = False) -> dict[str, Any]:
        return R.user(row, viewer=_user(), store=store, current=current)

    @app.get("/api/user/current.json")
    def current_user() -> Response:
        return _json(user_json(_user(), current=True))

    @app.get("/api/user.json")
    def list_users() -> Response:
        rows = store.list_users(include_jobs=as_bool(request.args.get("showJob")))
        public_key = request.args.get("publicKey")
        if public_key:
            rows = [r for r in rows if r["public_key"] == public_key]
        return _page([user_json(r) for r in rows])

    @app.post("/api/user.json")
    def add_user() -> Response:
        _require_admin()
        data = _body_dict()
        row = store.create_user(
            data.get("username", ""),
            firstname=data.get("firstname"),
            lastname=data.get("lastname"),
            email=data.get("email"),
            admin=as_bool(data.get("admin")),
        )
        return _json(
            R.command(
                ["user"],
                R.user(row, viewer=row, store=store),
                f"User {row['username']} added",
                "be.cytomine.AddUserCommand",
            )
        )

    @app.get("/api/user/<int:user_id>.json")
    @app.get("/api/userJob/<int:user_id>.json")
    @app.get("/api/userjob/<int:user_id>.json")
    def get_user(user_id: int) -> Response:
        return _json(user_json(store.get_user(user_id)))

    @app.put("/api/user/<int:user_id>.json")
    def update_user(user_id: int) -> Response:
        if _user()["id"] != user_id:
            _require_admin()
        row = store.get_user(user_id)
        data = _body_dict()
        with store.transaction() as db:
            db.execute(
                "UPDATE sec_user SET firstname = ?, lastname = ?, email = ? WHERE id = ?",
                (
                    data.get("firstname", row["firstname"]),
                    data.get("lastname", row["lastname"]),
                    data.get("email", row["email"]),
                    user_id,
                ),
            )
        return _json(
            R.command(
                ["user"],
                user_json(store.get_user(user_id)),
                f"User {row['username']} updated",
                "be.cytomine.EditUserCommand",
            )
        )

    @app.get("/api/user/<int:user_id>/keys.json")
    def user_keys(user_id: int) -> Response:
        row = store.get_user(user_id)
        if _user()["id"] != user_id and _user()["id"] != row["launcher_id"]:
            _require_admin()
        return _json(R.user_keys(row))

    @app.get("/api/userkey/<public_key>/keys.json")
    def user_keys_by_public_key(public_key: str) -> Response:
        row = store.find_user_by_public_key(public_key)
        if row is None:
            raise NotFound(f"No user with public key {public_key[:8]}...")
        if _user()["id"] != row["id"]:
            _require_admin()
        return _json(R.user_keys(row))

    @app.get("/api/project/<int:project_id>/user.json")
    @app.get("/api/project/<int:project_id>/admin.json")
    def project_users(project_id: int) -> Response:
        rows = store.list_users(project=project_id)
        if request.path.endswith("admin.json"):
            rows = [r for r in rows if r["is_admin"]]
        return _page([user_json(r) for r in rows])

    @app.get("/api/project/<int:project_id>/userjob.json")
    def project_job_users(project_id: int) -> Response:
        return _page([user_json(r) for r in store.list_job_users(project_id)])

    @app.route("/api/project/<int:project_id>/user/<int:user_id>.json", methods=["POST", "DELETE"])
    @app.route("/api/project/<int:project_id>/user/<int:user_id>/admin.json", methods=["POST", "DELETE"])
    def project_membership(project_id: int, user_id: int) -> Response:
        # Every user of the local server can open every project: membership is accepted and kept implicit.
        store.get_project(project_id)
        store.get_user(user_id)
        return _json(
            {
                "message": f"User {user_id} and project {project_id}: every user can access every project "
                "of the local server",
                "status": 200,
            }
        )


# ---------------------------------------------------------------------- ontologies, terms, projects
def _register_ontology_and_projects(app: Flask, backend: Backend) -> None:
    store = backend.store

    def ontology_json(row: Row) -> dict[str, Any]:
        projects = [p["id"] for p in store.list_projects(ontology=row["id"])]
        return R.ontology(row, store.list_terms(ontology=row["id"]), projects)

    @app.get("/api/ontology.json")
    def list_ontologies() -> Response:
        return _page([ontology_json(r) for r in store.list_ontologies()])

    @app.post("/api/ontology.json")
    def add_ontology() -> Response:
        row = store.create_ontology(_body_dict().get("name"), _user()["id"])
        return _json(
            R.command(
                ["ontology"], ontology_json(row), f"Ontology {row['name']} added", "be.cytomine.AddOntologyCommand"
            )
        )

    @app.get("/api/ontology/<int:ontology_id>.json")
    def get_ontology(ontology_id: int) -> Response:
        return _json(ontology_json(store.get_ontology(ontology_id)))

    @app.put("/api/ontology/<int:ontology_id>.json")
    def update_ontology(ontology_id: int) -> Response:
        row = store.update_ontology(ontology_id, _body_dict().get("name"))
        return _json(
            R.command(
                ["ontology"], ontology_json(row), f"Ontology {row['name']} updated", "be.cytomine.EditOntologyCommand"
            )
        )

    @app.delete("/api/ontology/<int:ontology_id>.json")
    def delete_ontology(ontology_id: int) -> Response:
        row = store.delete_ontology(ontology_id)
        return _json(
            R.command(
                ["ontology"],
                R.ontology(row, []),
                f"Ontology {row['name']} deleted",
                "be.cytomine.DeleteOntologyCommand",
            )
        )

    @app.get("/api/term.json")
    def list_terms() -> Response:
        return _page([R.term(t) for t in store.list_terms()])

    @app.get("/api/ontology/<int:ontology_id>/term.json")
    def ontology_terms(ontology_id: int) -> Response:
        return _page([R.term(t) for t in store.list_terms(ontology=ontology_id)])

    @app.get("/api/project/<int:project_id>/term.json")
    def project_terms(project_id: int) -> Response:
        return _page([R.term(t) for t in store.list_terms(project=project_id)])

    @app.post("/api/term.json")
    def add_term() -> Response:
        data = _body_dict()
        row = store.create_term(
            data.get("name"), data.get("ontology"), data.get("color"), data.get("comment"), data.get("parent")
        )
        return _json(R.command(["term"], R.term(row), f"Term {row['name']} added", "be.cytomine.AddTermCommand"))

    @app.get("/api/term/<int:term_id>.json")
    def get_term(term_id: int) -> Response:
        return _json(R.term(store.get_term(term_id)))

    @app.put("/api/term/<int:term_id>.json")
    def update_term(term_id: int) -> Response:
        row = store.update_term(term_id, _body_dict())
        return _json(R.command(["term"], R.term(row), f"Term {row['name']} updated", "be.cytomine.EditTermCommand"))

    @app.delete("/api/term/<int:term_id>.json")
    def delete_term(term_id: int) -> Response:
        row = store.delete_term(term_id)
        return _json(R.command(["term"], R.term(row), f"Term {row['name']} deleted", "be.cytomine.DeleteTermCommand"))

    def project_json(rows: list[Row]) -> list[dict[str, Any]]:
        counts = store.project_counts([r["id"] for r in rows])
        names = {o["id"]: o["name"] for o in store.list_ontologies()}
        return [R.project(r, counts[r["id"]], names.get(r["ontology_id"])) for r in rows]

    @app.get("/api/project.json")
    @app.get("/api/user/<int:user_id>/project.json")
    def list_projects(user_id: int | None = None) -> Response:
        if user_id is not None:
            store.get_user(user_id)
        return _page(project_json(store.list_projects()))

    @app.get("/api/ontology/<int:ontology_id>/project.json")
    def ontology_projects(ontology_id: int) -> Response:
        store.get_ontology(ontology_id)
        return _page(project_json(store.list_projects(ontology=ontology_id)))

    @app.get("/api/software/<int:software_id>/project.json")
    def software_projects(software_id: int) -> Response:
        store.get_software(software_id)
        return _page(project_json(store.list_projects(software=software_id)))

    @app.post("/api/project.json")
    def add_project() -> Response:
        data = _body_dict()
        row = store.create_project(data.get("name"), data.get("ontology"), _user()["id"])
        return _json(
            R.command(
                ["project"], project_json([row])[0], f"Project {row['name']} added", "be.cytomine.AddProjectCommand"
            )
        )

    @app.get("/api/project/<int:project_id>.json")
    def get_project(project_id: int) -> Response:
        return _json(project_json([store.get_project(project_id)])[0])

    @app.put("/api/project/<int:project_id>.json")
    def update_project(project_id: int) -> Response:
        row = store.update_project(project_id, _body_dict())
        return _json(
            R.command(
                ["project"], project_json([row])[0], f"Project {row['name']} updated", "be.cytomine.EditProjectCommand"
            )
        )

    @app.delete("/api/project/<int:project_id>.json")
    def delete_project(project_id: int) -> Response:
        row = store.delete_project(project_id)
        return _json(
            R.command(
                ["project"],
                R.project(row, {}, None),
                f"Project {row['name']} deleted",
                "be.cytomine.DeleteProjectCommand",
            )
        )


# ---------------------------------------------------------------------- images
def _register_images(app: Flask, backend: Backend, base_url: Callable[[], str]) -> None:
    store, cache = backend.store, backend.cache

    def image_json(rows: list[Row]) -> list[dict[str, Any]]:
        counts = store.image_counts([r["id"] for r in rows])
        return [R.image_instance(r, base_url(), store.image_zoom(r), counts[r["id"]]) for r in rows]

    @app.get("/api/project/<int:project_id>/imageinstance.json")
    def project_images(project_id: int) -> Response:
        return _page(image_json(store.list_images(project_id)))

    @app.get("/api/user/<int:user_id>/imageinstance.json")
    def user_images(user_id: int) -> Response:
        store.get_user(user_id)
        rows = [img for p in store.list_projects() for img in store.list_images(p["id"])]
        return _page(image_json(rows))

    @app.get("/api/imageinstance/<int:image_id>.json")
    def get_image(image_id: int) -> Response:
        return _json(image_json([store.get_image(image_id)])[0])

    @app.post("/api/imageinstance.json")
    def add_image() -> Response:
        data = _body_dict()
        base_image, project = as_int(data.get("baseImage"), "baseImage"), as_int(data.get("project"), "project")
        if base_image is None or project is None:
            raise BadRequest("An image instance needs 'baseImage' (an abstract image id) and 'project'")
        row = store.add_image_instance(base_image, project, _user()["id"], data.get("instanceFilename"))
        return _json(
            R.command(
                ["imageinstance"],
                image_json([row])[0],
                f"Image {row['instance_filename']} added",
                "be.cytomine.AddImageInstanceCommand",
            )
        )

    @app.delete("/api/imageinstance/<int:image_id>.json")
    def delete_image(image_id: int) -> Response:
        row = store.delete_image(image_id)
        return _json(
            R.command(
                ["imageinstance"],
                R.image_instance(row, base_url(), 0),
                f"Image {image_id} deleted",
                "be.cytomine.DeleteImageInstanceCommand",
            )
        )

    @app.get("/api/abstractimage.json")
    def list_abstract_images() -> Response:
        return _page([R.abstract_image(r, base_url(), store.image_zoom(r)) for r in store.list_abstract_images()])

    @app.get("/api/abstractimage/<int:abstract_id>.json")
    def get_abstract_image(abstract_id: int) -> Response:
        row = store.get_abstract_image(abstract_id)
        return _json(R.abstract_image(row, base_url(), store.image_zoom(row)))

    @app.get("/api/imageinstance/<int:image_id>/sliceinstance/reference.json")
    def reference_slice(image_id: int) -> Response:
        return _json(R.slice_instance(store.get_image(image_id), base_url()))

    @app.get("/api/imageinstance/<int:image_id>/sliceinstance.json")
    def image_slices(image_id: int) -> Response:
        return _page([R.slice_instance(store.get_image(image_id), base_url())])

    @app.get("/api/sliceinstance/<int:slice_id>.json")
    def get_slice(slice_id: int) -> Response:
        return _json(R.slice_instance(store.get_image_by_slice(slice_id), base_url()))

    def thumb(path: str, default_size: int, fmt: str) -> Response:
        max_size = _arg_int("maxSize", default_size) or default_size
        return _image_response(*render_thumb(cache.get(path), max_size, fmt))

    @app.route("/api/imageinstance/<int:image_id>/thumb.<fmt>", methods=["GET", "POST"])
    def image_thumb(image_id: int, fmt: str) -> Response:
        return thumb(store.get_image(image_id)["path"], 512, fmt)

    @app.route("/api/imageinstance/<int:image_id>/preview.<fmt>", methods=["GET", "POST"])
    def image_preview(image_id: int, fmt: str) -> Response:
        return thumb(store.get_image(image_id)["path"], 1024, fmt)

    @app.route("/api/abstractimage/<int:abstract_id>/thumb.<fmt>", methods=["GET", "POST"])
    def abstract_thumb(abstract_id: int, fmt: str) -> Response:
        return thumb(store.get_abstract_image(abstract_id)["path"], 512, fmt)

    @app.route(
        "/api/imageinstance/<int:image_id>/window-<int(signed=True):x>-<int(signed=True):y>-<int:w>-<int:h>.<fmt>",
        methods=["GET", "POST"],
    )
    @app.route(
        "/api/imageinstance/<int:image_id>/camera-<int(signed=True):x>-<int(signed=True):y>-<int:w>-<int:h>.<fmt>",
        methods=["GET", "POST"],
    )
    def image_window(image_id: int, x: int, y: int, w: int, h: int, fmt: str) -> Response:
        image = store.get_image(image_id)
        data, mime = render_window(
            cache.get(image["path"]),
            x,
            y,
            w,
            h,
            fmt,
            with_exterior=as_bool(request.args.get("withExterior")),
            max_size=_arg_int("maxSize"),
        )
        return _image_response(data, mime)

    @app.route("/api/imageinstance/<int:image_id>/crop.<fmt>", methods=["GET", "POST"])
    def image_crop(image_id: int, fmt: str) -> Response:
        image = store.get_image(image_id)
        wkt = request.args.get("location") or request.args.get("geometry")
        if not wkt:
            raise BadRequest("An image crop needs 'location' (a WKT geometry in Cytomine coordinates)")
        options = _crop_options(backend.config, "crop", fmt)
        return _image_response(*render_crop(cache.get(image["path"]), parse_wkt(wkt), options))

    @app.get("/api/imageinstance/<int:image_id>/download")
    @app.get("/api/abstractimage/<int:abstract_id>/download")
    def download_image(image_id: int | None = None, abstract_id: int | None = None) -> Response:
        row = store.get_image(image_id) if image_id is not None else store.get_abstract_image(abstract_id)  # type: ignore[arg-type]
        return send_file(
            row["path"], as_attachment=True, download_name=row["original_filename"], conditional=False, etag=False
        )


def _crop_options(config: ServerConfig, kind: str, fmt: str) -> CropOptions:
    """Crop parameters from the query string (the client's Annotation.dump sends them)."""
    args = request.args
    if kind == "crop":
        requested = (args.get("type") or "").lower()
        if requested in ("draw", "mask", "alphamask"):
            kind = requested
        elif as_bool(args.get("draw")):
            kind = "draw"
        elif as_bool(args.get("mask")):
            kind = "mask"
        elif as_bool(args.get("alphaMask")):
            kind = "alphamask"
    return CropOptions(
        kind=kind,
        max_size=_arg_int("maxSize", config.crop_default_max_size),
        zoom=_arg_int("zoom"),
        increase_area=_arg_float("increaseArea"),
        square=as_bool(args.get("square")),
        fmt=fmt,
        jpeg_quality=_arg_int("jpegQuality"),
        color=(args.get("color") or "#ff0000").replace("0x", "#"),
        thickness=_arg_int("thickness", 1) or 1,
    )


# ---------------------------------------------------------------------- annotations
def _show_groups(params: dict[str, Any]) -> set[str]:
    groups = [group for switch, group in SHOW_GROUPS.items() if as_bool(params.get(switch))]
    if as_bool(params.get("showDefault")) or not groups:
        groups += list(R.DEFAULT_ANNOTATION_GROUPS)
    hidden = {group for switch, group in SHOW_GROUPS.items() if as_bool(params.get(switch.replace("show", "hide")))}
    return ({g for g in groups if g not in hidden}) | {"basic"}


def _register_annotations(app: Flask, backend: Backend, base_url: Callable[[], str]) -> None:
    store = backend.store

    def listing_params() -> dict[str, Any]:
        params: dict[str, Any] = dict(request.args.items())
        if request.method == "POST" and request.get_data(cache=True):
            params.update({k: v for k, v in _body_dict().items() if v is not None})
        return params

    def build_queries(params: dict[str, Any]) -> list[AnnotationQuery]:
        """The listings a request asks for, as the core's AnnotationListingBuilder decides."""
        users = list(
            dict.fromkeys((parse_id_list(params.get("user")) or []) + (parse_id_list(params.get("users")) or []))
        )
        job = as_int(params.get("job"), "job")
        if job is not None:
            job_user = store.job_user(job)
            if job_user is None:
                raise NotFound(f"Job {job} not found")
            users = [job_user["id"]]
        images = (parse_id_list(params.get("image")) or []) + (parse_id_list(params.get("images")) or [])
        slices = (parse_id_list(params.get("slice")) or []) + (parse_id_list(params.get("slices")) or [])
        terms = (parse_id_list(params.get("term")) or []) + (parse_id_list(params.get("terms")) or [])
        suggested = (parse_id_list(params.get("suggestedTerm")) or []) + (
            parse_id_list(params.get("suggestedTerms")) or []
        )
        for_term_algo = (parse_id_list(params.get("userForTermAlgo")) or []) + (
            parse_id_list(params.get("usersForTermAlgo")) or []
        )
        job_for_term_algo = as_int(params.get("jobForTermAlgo"), "jobForTermAlgo")
        if job_for_term_algo is not None:
            job_user = store.job_user(job_for_term_algo)
            if job_user is None:
                raise NotFound(f"Job {job_for_term_algo} not found")
            for_term_algo.append(job_user["id"])
        project = as_int(params.get("project"), "project")
        if project is not None:
            store.get_project(project)
        for image_id in images:
            store.get_image(image_id)
        bbox = None
        if params.get("bbox"):
            bbox = parse_bbox(str(params["bbox"]))
        elif params.get("bboxAnnotation"):
            reference = as_int(params["bboxAnnotation"], "bboxAnnotation") or 0
            bbox = shapely.from_wkt(store.get_annotation(reference)["location"])
        common = dict(
            project=project,
            images=images or None,
            slices=slices or None,
            users=users or None,
            no_term=as_bool(params.get("noTerm")),
            multiple_term=as_bool(params.get("multipleTerm")),
            no_algo_term=as_bool(params.get("noAlgoTerm")),
            review_users=parse_id_list(params.get("reviewUsers")),
            not_reviewed_only=as_bool(params.get("notReviewedOnly")),
            bbox=bbox,
            after=as_int(params.get("afterThan"), "afterThan"),
            before=as_int(params.get("beforeThan"), "beforeThan"),
            excluded=as_int(params.get("excludedAnnotation"), "excludedAnnotation"),
            users_for_term_algo=for_term_algo or None,
            with_algo_terms="algo" in _show_groups(params),
        )
        if as_bool(params.get("reviewed")):
            return [AnnotationQuery(kind="reviewed", terms=terms or None, suggested_terms=suggested or None, **common)]
        single_user = parse_id_list(params.get("user"))
        if single_user and len(single_user) == 1:
            store.get_user(single_user[0])  # 404 for an unknown "user", as the core; "users" are not checked
        algo_users = any(u["algo"] for u in store.get_users(users))
        if as_bool(params.get("includeAlgo")) or algo_users:
            # The core lists algo annotations, then user annotations whose *suggested* term matches.
            algo = AnnotationQuery(
                kind="algo",
                terms=terms or None,
                suggested_terms=suggested or None,
                **{**common, "users_for_term_algo": None, "with_algo_terms": False},
            )
            human = AnnotationQuery(kind="user", suggested_terms=(terms + suggested) or None, **common)
            return [algo, human]
        return [AnnotationQuery(kind="user", terms=terms or None, suggested_terms=suggested or None, **common)]

    def listing_extras(rows: list[Row], groups: set[str]) -> dict[int, dict[str, Any]]:
        extra: dict[int, dict[str, Any]] = {}
        if "image" in groups:
            for image in store.get_images({r["image_id"] for r in rows}):
                extra[image["id"]] = {
                    "originalFilename": image["original_filename"],
                    "instanceFilename": image["instance_filename"] or image["original_filename"],
                }
        if "user" in groups:
            for user in store.get_users({r["user_id"] for r in rows}):
                extra[-user["id"]] = {
                    "creator": user["username"],
                    "lastname": user["lastname"],
                    "firstname": user["firstname"],
                }
        return extra

    @app.get("/api/annotation.json")
    @app.route("/api/annotation/search.json", methods=["GET", "POST"])
    def list_annotations() -> Response:
        params = listing_params()
        groups = _show_groups(params)
        offset, max_ = _paging()
        queries = build_queries(params)
        if len(queries) == 1:
            rows, total = store.list_annotations(queries[0], offset, max_)
        else:
            combined = [row for q in queries for row in store.list_annotations(q)[0]]
            total = len(combined)
            rows = combined[offset : offset + max_] if max_ else combined[offset:]
        extras = listing_extras(rows, groups)
        items = [R.annotation_listing_item(r, groups, base_url(), extras) for r in rows]
        return _json(R.collection(items, total=total, offset=offset, max_=max_, paginated=True))

    @app.get("/api/imageinstance/<int:image_id>/annotation/included.json")
    def included_annotations(image_id: int) -> Response:
        params = listing_params()
        image = store.get_image(image_id)
        if params.get("geometry"):
            area = parse_wkt(params["geometry"])
        elif params.get("annotation"):
            area = shapely.from_wkt(store.get_annotation(as_int(params["annotation"], "annotation"))["location"])  # type: ignore[arg-type]
        else:
            raise BadRequest("Give 'geometry' (WKT) or 'annotation' (an id) to list the annotations it includes")
        users = parse_id_list(params.get("user")) or parse_id_list(params.get("users"))
        kind = "algo" if users and any(u["algo"] for u in store.get_users(users)) else "user"
        query = AnnotationQuery(
            kind=kind,
            images=[image["id"]],
            users=users,
            bbox=area,
            terms=parse_id_list(params.get("terms")),
            excluded=as_int(params.get("annotation"), "annotation"),
        )
        rows, _ = store.list_annotations(query)
        rows = [r for r in rows if area.covers(shapely.from_wkt(r["location"]))]
        groups = _show_groups(params)
        return _page([R.annotation_listing_item(r, groups, base_url(), listing_extras(rows, groups)) for r in rows])

    def annotation_keys(row: Row) -> list[str]:
        return ["annotation", ANNOTATION_KINDS[row["kind"]]]

    @app.post("/api/annotation.json")
    @app.post("/api/userannotation.json")
    @app.post("/api/algoannotation.json")
    def add_annotation() -> Response:
        data = _body()
        user = _user()
        if request.path.endswith("/userannotation.json") and user["algo"]:
            raise BadRequest(
                f"User {user['username']!r} is a job user: it creates algo annotations (POST /api/annotation.json)"
            )
        if request.path.endswith("/algoannotation.json") and not user["algo"]:
            raise BadRequest(f"User {user['username']!r} is not a job user: it creates user annotations")
        if isinstance(data, list):
            created, errors = store.create_annotations(data, user)
            domain = "algoannotations" if user["algo"] else "userannotations"
            status = 200 if not errors else (206 if created else 400)
            message = f"{domain} {','.join(map(str, created))} added" if created else f"no {domain} added"
            if errors:
                message += "; refused: " + " | ".join(errors)[:2000]
            # As the core: HTTP 200 whatever happened, the outcome is in the body's "status".
            return _json(
                {
                    "data": {"message": message, "created": created, "errors": errors},
                    "status": status,
                    "message": message,
                }
            )
        if not isinstance(data, dict):
            raise BadRequest("A JSON object (one annotation) or array (several) is expected")
        row = store.create_annotation(data, user)
        return _json(
            R.command(
                annotation_keys(row),
                R.annotation(row, base_url()),
                f"{ANNOTATION_KINDS[row['kind']]} {row['id']} added",
                "be.cytomine.AddAnnotationCommand",
            )
        )

    for domain, kind in ANNOTATION_DOMAINS.items():
        _register_annotation_domain(app, backend, base_url, domain, kind, annotation_keys)

    @app.route("/api/annotation/<int:annotation_id>/review.json", methods=["POST", "PUT"])
    def review(annotation_id: int) -> Response:
        data = _body()
        terms = data.get("terms") if isinstance(data, dict) else None
        row = store.review_annotation(annotation_id, _user(), terms)
        return _json(
            R.command(
                ["reviewedannotation", "annotation"],
                R.annotation(row, base_url()),
                f"Annotation {annotation_id} reviewed",
                "be.cytomine.AddReviewedAnnotationCommand",
            )
        )

    @app.delete("/api/annotation/<int:annotation_id>/review.json")
    def unreview(annotation_id: int) -> Response:
        row = store.unreview_annotation(annotation_id, _user())
        return _json(
            R.command(
                ["reviewedannotation", "annotation"],
                R.annotation(row, base_url()),
                f"Review of annotation {annotation_id} removed",
                "be.cytomine.DeleteReviewedAnnotationCommand",
            )
        )

    # ---- annotation terms
    @app.get("/api/annotation/<int:annotation_id>/term.json")
    @app.get("/api/annotation/<int:annotation_id>/user/<int:user_id>/term.json")
    def annotation_term_list(annotation_id: int, user_id: int | None = None) -> Response:
        rows = store.list_annotation_term_rows(annotation_id, user_id)
        annotation = store.get_annotation(annotation_id)
        if annotation["kind"] == "algo":
            return _page([R.algo_annotation_term({**r, "annotation_kind": "algo"}) for r in rows])
        return _page([R.annotation_term(r) for r in rows])

    @app.post("/api/annotation/<int:annotation_id>/term/<int:term_id>.json")
    def add_annotation_term(annotation_id: int, term_id: int) -> Response:
        user = _user()
        if user["algo"]:
            data = _body_dict() if request.get_data(cache=True) else {}
            row = store.add_algo_annotation_term(
                annotation_id, term_id, user, expected_term=data.get("expectedTerm"), rate=data.get("rate")
            )
            # Under both keys: the client's AlgoAnnotationTerm reads the first, AnnotationTerm the second.
            return _json(
                R.command(
                    ["algoannotationterm", "annotationterm"],
                    R.algo_annotation_term(row),
                    f"Algo term {term_id} added to annotation {annotation_id}",
                    "be.cytomine.AddAlgoAnnotationTermCommand",
                )
            )
        row = store.add_annotation_term(annotation_id, term_id, user)
        return _json(
            R.command(
                ["annotationterm"],
                R.annotation_term(row),
                f"Term {term_id} added to annotation {annotation_id}",
                "be.cytomine.AddAnnotationTermCommand",
            )
        )

    @app.post("/api/annotation/<int:annotation_id>/term/<int:term_id>/clearBefore.json")
    def replace_annotation_term(annotation_id: int, term_id: int) -> Response:
        user = _user()
        if user["algo"]:
            raise BadRequest("A job user cannot delete user terms from a user annotation (clearBefore)")
        row = store.add_annotation_term(
            annotation_id, term_id, user, clear_before=True, clear_for_all=as_bool(request.args.get("clearForAll"))
        )
        return _json(
            R.command(
                ["annotationterm"],
                R.annotation_term(row),
                f"Term {term_id} set on annotation {annotation_id}",
                "be.cytomine.AddAnnotationTermCommand",
            )
        )

    @app.get("/api/annotation/<int:annotation_id>/term/<int:term_id>.json")
    @app.get("/api/annotation/<int:annotation_id>/term/<int:term_id>/user/<int:user_id>.json")
    def get_annotation_term(annotation_id: int, term_id: int, user_id: int | None = None) -> Response:
        row = store.get_annotation_term(annotation_id, term_id, user_id)
        if row.get("algo"):
            row["annotation_kind"] = store.get_annotation(annotation_id)["kind"]
            return _json(R.algo_annotation_term(row))
        return _json(R.annotation_term(row))

    @app.delete("/api/annotation/<int:annotation_id>/term/<int:term_id>.json")
    @app.delete("/api/annotation/<int:annotation_id>/term/<int:term_id>/user/<int:user_id>.json")
    def delete_annotation_term(annotation_id: int, term_id: int, user_id: int | None = None) -> Response:
        row = store.delete_annotation_term(annotation_id, term_id, _user(), user_id)
        return _json(
            R.command(
                ["annotationterm"],
                R.annotation_term(row),
                f"Term {term_id} removed from annotation {annotation_id}",
                "be.cytomine.DeleteAnnotationTermCommand",
            )
        )


def _register_annotation_domain(
    app: Flask,
    backend: Backend,
    base_url: Callable[[], str],
    domain: str,
    kind: str | None,
    annotation_keys: Callable[[Row], list[str]],
) -> None:
    """GET/PUT/DELETE and crops of ``/api/{annotation|userannotation|algoannotation|reviewedannotation}/{id}``."""
    store, cache = backend.store, backend.cache

    def get_one(annotation_id: int) -> Response:
        return _json(R.annotation(store.get_annotation(annotation_id, kind), base_url()))

    def update_one(annotation_id: int) -> Response:
        store.get_annotation(annotation_id, kind)
        row = store.update_annotation(annotation_id, _body_dict(), _user())
        return _json(
            R.command(
                annotation_keys(row),
                R.annotation(row, base_url()),
                f"{ANNOTATION_KINDS[row['kind']]} {annotation_id} updated",
                "be.cytomine.EditAnnotationCommand",
            )
        )

    def delete_one(annotation_id: int) -> Response:
        row = store.delete_annotation(annotation_id, _user(), kind)
        return _json(
            R.command(
                annotation_keys(row),
                R.annotation(row, base_url()),
                f"{ANNOTATION_KINDS[row['kind']]} {annotation_id} deleted",
                "be.cytomine.DeleteAnnotationCommand",
            )
        )

    def crop_one(annotation_id: int, fmt: str, crop_kind: str = "crop") -> Response:
        row = store.get_annotation(annotation_id, kind)
        image = store.get_image(row["image_id"])
        options = _crop_options(backend.config, crop_kind, fmt)
        pixels = cache.get(image["path"])  # decoding happens outside the database lock
        return _image_response(*render_crop(pixels, shapely.from_wkt(row["location"]), options))

    prefix = f"/api/{domain}/<int:annotation_id>"
    app.add_url_rule(f"{prefix}.json", f"{domain}_get", get_one, methods=["GET"])
    app.add_url_rule(f"{prefix}.json", f"{domain}_put", update_one, methods=["PUT"])
    app.add_url_rule(f"{prefix}.json", f"{domain}_delete", delete_one, methods=["DELETE"])
    for crop_kind in ("crop", "mask", "alphamask"):
        app.add_url_rule(
            f"{prefix}/{crop_kind}.<fmt>",
            f"{domain}_{crop_kind}",
            lambda annotation_id, fmt, _k=crop_kind: crop_one(annotation_id, fmt, _k),
            methods=["GET", "POST"],
        )


# ---------------------------------------------------------------------- properties, files, descriptions
def _register_meta(app: Flask, backend: Backend, base_url: Callable[[], str]) -> None:
    store = backend.store
    shortcuts = {
        "annotation": "be.cytomine.ontology.AnnotationDomain",
        "project": CLASS_NAMES["project"],
        "imageinstance": CLASS_NAMES["imageinstance"],
    }

    def domain_of(cls: str | None, shortcut: str | None) -> str:
        return shortcuts[shortcut] if shortcut else str(cls)

    def list_properties(ident: int, cls: str | None = None, shortcut: str | None = None) -> Response:
        return _page([R.property_(p) for p in store.list_properties(domain_of(cls, shortcut), ident)])

    def add_property(ident: int, cls: str | None = None, shortcut: str | None = None) -> Response:
        data = _body_dict()
        row = store.add_property(domain_of(cls, shortcut), ident, data.get("key"), data.get("value"))
        return _json(
            R.command(["property"], R.property_(row), f"Property {row['key']} added", "be.cytomine.AddPropertyCommand")
        )

    def one_property(ident: int, property_id: int, cls: str | None = None, shortcut: str | None = None) -> Response:
        canonical = store.resolve_domain(domain_of(cls, shortcut), ident)
        row = store.get_property(property_id)
        if row["domain_ident"] != ident or row["domain_class"] != canonical:
            raise NotFound(f"Property {property_id} not found on {canonical.rsplit('.', 1)[-1]} {ident}")
        if request.method == "PUT":
            row = store.update_property(property_id, _body_dict())
            return _json(
                R.command(
                    ["property"], R.property_(row), f"Property {row['key']} updated", "be.cytomine.EditPropertyCommand"
                )
            )
        if request.method == "DELETE":
            row = store.delete_property(property_id)
            return _json(
                R.command(
                    ["property"],
                    R.property_(row),
                    f"Property {row['key']} deleted",
                    "be.cytomine.DeletePropertyCommand",
                )
            )
        return _json(R.property_(row))

    def property_by_key(ident: int, key: str, cls: str | None = None, shortcut: str | None = None) -> Response:
        return _json(R.property_(store.find_property(domain_of(cls, shortcut), ident, key)))

    for prefix, shortcut in [
        ("/api/domain/<cls>/<int:ident>", None),
        ("/api/annotation/<int:ident>", "annotation"),
        ("/api/project/<int:ident>", "project"),
        ("/api/imageinstance/<int:ident>", "imageinstance"),
    ]:
        defaults = {"shortcut": shortcut} if shortcut else None
        tag = shortcut or "domain"
        app.add_url_rule(
            f"{prefix}/property.json", f"{tag}_properties", list_properties, methods=["GET"], defaults=defaults
        )
        app.add_url_rule(
            f"{prefix}/property.json", f"{tag}_add_property", add_property, methods=["POST"], defaults=defaults
        )
        app.add_url_rule(
            f"{prefix}/property/<int:property_id>.json",
            f"{tag}_property",
            one_property,
            methods=["GET", "PUT", "DELETE"],
            defaults=defaults,
        )
        app.add_url_rule(
            f"{prefix}/key/<key>/property.json",
            f"{tag}_property_by_key",
            property_by_key,
            methods=["GET"],
            defaults=defaults,
        )

    @app.get("/api/property/<int:property_id>.json")
    def get_property(property_id: int) -> Response:
        return _json(R.property_(store.get_property(property_id)))

    # ---- attached files
    def uploaded_file() -> tuple[str, bytes]:
        upload = request.files.get("files[]") or next(iter(request.files.values()), None)
        if upload is None:
            raise BadRequest("No file in the request: send it as multipart/form-data field 'files[]'")
        return upload.filename or "file", upload.read()

    @app.post("/api/attachedfile.json")
    def add_attached_file() -> Response:
        cls = request.args.get("domainClassName") or request.form.get("domainClassName")
        ident = as_int(request.args.get("domainIdent") or request.form.get("domainIdent"), "domainIdent")
        if not cls or ident is None:
            raise BadRequest("An attached file needs 'domainClassName' and 'domainIdent' (query parameters)")
        filename, data = uploaded_file()
        name = request.args.get("filename") or request.form.get("filename") or filename
        row = store.add_attached_file(cls, ident, name, data, key=request.args.get("key"))
        return _json(R.attached_file(row, base_url()))  # the client's upload_file reads the bare object

    @app.get("/api/attachedfile.json")
    def list_all_attached_files() -> Response:
        _require_admin()
        return _page([R.attached_file(r, base_url()) for r in store.list_attached_files()])

    @app.get("/api/domain/<cls>/<int:ident>/attachedfile.json")
    def list_attached_files(cls: str, ident: int) -> Response:
        return _page([R.attached_file(r, base_url()) for r in store.list_attached_files(cls, ident)])

    @app.get("/api/attachedfile/<int:file_id>.json")
    def get_attached_file(file_id: int) -> Response:
        return _json(R.attached_file(store.get_attached_file(file_id), base_url()))

    @app.delete("/api/attachedfile/<int:file_id>.json")
    def delete_attached_file(file_id: int) -> Response:
        row = store.delete_attached_file(file_id)
        return _json(
            R.command(
                ["attachedfile"],
                R.attached_file(row, base_url()),
                f"Attached file {file_id} deleted",
                "be.cytomine.DeleteAttachedFileCommand",
            )
        )

    @app.get("/api/attachedfile/<int:file_id>/download")
    def download_attached_file(file_id: int) -> Response:
        row = store.get_attached_file(file_id)
        return send_file(
            row["storage"], as_attachment=True, download_name=row["filename"], conditional=False, etag=False
        )

    # ---- descriptions
    @app.route("/api/domain/<cls>/<int:ident>/description.json", methods=["GET", "POST", "PUT", "DELETE"])
    def description(cls: str, ident: int) -> Response:
        if request.method == "GET":
            return _json(R.description(store.get_description(cls, ident)))
        if request.method == "DELETE":
            row = store.delete_description(cls, ident)
            return _json(
                R.command(
                    ["description"], R.description(row), "Description deleted", "be.cytomine.DeleteDescriptionCommand"
                )
            )
        row = store.set_description(cls, ident, _body_dict().get("data"))
        return _json(
            R.command(["description"], R.description(row), "Description saved", "be.cytomine.AddDescriptionCommand")
        )


# ---------------------------------------------------------------------- software and jobs
def _register_software_and_jobs(app: Flask, backend: Backend, base_url: Callable[[], str]) -> None:
    store = backend.store

    def software_json(row: Row) -> dict[str, Any]:
        return R.software(row, store.list_software_parameters(row["id"]), store.software_job_counts(row["id"]))

    def job_json(row: Row) -> dict[str, Any]:
        job_user = store.job_user(row["id"])
        human = store.get_user(job_user["launcher_id"]) if job_user and job_user["launcher_id"] else None
        body = R.job(row, store.get_software(row["software_id"]), job_user, human, store.list_job_parameters(row["id"]))
        state = backend.launcher.process_state(row["id"]) if backend.launcher is not None else None
        if state is not None:  # an extension: whether the local processing server's process still runs
            body.update(state)
        return body

    @app.get("/api/software.json")
    @app.get("/api/project/<int:project_id>/software.json")
    def list_software(project_id: int | None = None) -> Response:
        project_id = project_id if project_id is not None else _arg_int("project")
        return _page([software_json(r) for r in store.list_software(project_id)])

    @app.post("/api/software.json")
    def add_software() -> Response:
        row = store.create_software(_body_dict())
        return _json(
            R.command(
                ["software"], software_json(row), f"Software {row['name']} added", "be.cytomine.AddSoftwareCommand"
            )
        )

    @app.get("/api/software/<int:software_id>.json")
    def get_software(software_id: int) -> Response:
        return _json(software_json(store.get_software(software_id)))

    @app.put("/api/software/<int:software_id>.json")
    def update_software(software_id: int) -> Response:
        row = store.update_software(software_id, _body_dict())
        return _json(
            R.command(
                ["software"], software_json(row), f"Software {row['name']} updated", "be.cytomine.EditSoftwareCommand"
            )
        )

    @app.delete("/api/software/<int:software_id>.json")
    def delete_software(software_id: int) -> Response:
        row = store.delete_software(software_id)
        return _json(
            R.command(
                ["software"],
                R.software(row, [], {}),
                f"Software {row['name']} deleted",
                "be.cytomine.DeleteSoftwareCommand",
            )
        )

    @app.get("/api/software/<int:software_id>/software_parameter.json")
    @app.get("/api/software/<int:software_id>/parameter.json")
    @app.get("/api/software/<int:software_id>/softwareparameter.json")
    def list_software_parameters(software_id: int) -> Response:
        rows = store.list_software_parameters(
            software_id, with_set_by_server=as_bool(request.args.get("withSetByServer"))
        )
        return _page([R.software_parameter(r) for r in rows])

    param_keys = ["software_parameter", "softwareparameter"]

    @app.post("/api/software_parameter.json")
    @app.post("/api/softwareparameter.json")
    def add_software_parameter() -> Response:
        row = store.add_software_parameter(_body_dict())
        return _json(
            R.command(
                param_keys,
                R.software_parameter(row),
                f"Parameter {row['name']} added",
                "be.cytomine.AddSoftwareParameterCommand",
            )
        )

    @app.route("/api/software_parameter/<int:parameter_id>.json", methods=["GET", "PUT", "DELETE"])
    @app.route("/api/softwareparameter/<int:parameter_id>.json", methods=["GET", "PUT", "DELETE"])
    def software_parameter(parameter_id: int) -> Response:
        if request.method == "PUT":
            row = store.update_software_parameter(parameter_id, _body_dict())
            return _json(
                R.command(
                    param_keys,
                    R.software_parameter(row),
                    f"Parameter {row['name']} updated",
                    "be.cytomine.EditSoftwareParameterCommand",
                )
            )
        if request.method == "DELETE":
            row = store.delete_software_parameter(parameter_id)
            return _json(
                R.command(
                    param_keys,
                    R.software_parameter(row),
                    f"Parameter {row['name']} deleted",
                    "be.cytomine.DeleteSoftwareParameterCommand",
                )
            )
        return _json(R.software_parameter(store.get_software_parameter(parameter_id)))

    def software_project_json(row: Row) -> dict[str, Any]:
        return R.software_project(row, store.get_software(row["software_id"]))

    @app.post("/api/softwareproject.json")
    def add_software_project() -> Response:
        data = _body_dict()
        sid, pid = as_int(data.get("software"), "software"), as_int(data.get("project"), "project")
        if sid is None or pid is None:
            raise BadRequest("A software-project link needs 'software' and 'project'")
        row = store.add_software_project(sid, pid)
        return _json(
            R.command(
                ["softwareproject"],
                software_project_json(row),
                "Software added to project",
                "be.cytomine.AddSoftwareProjectCommand",
            )
        )

    @app.get("/api/softwareproject.json")
    @app.get("/api/project/<int:project_id>/softwareproject.json")
    def list_software_projects(project_id: int | None = None) -> Response:
        project_id = project_id if project_id is not None else _arg_int("project")
        if project_id is None:
            raise BadRequest("Give the project: /api/project/{id}/softwareproject.json")
        return _page([software_project_json(r) for r in store.list_software_projects(project_id)])

    @app.route("/api/softwareproject/<int:sp_id>.json", methods=["GET", "DELETE"])
    def software_project(sp_id: int) -> Response:
        if request.method == "DELETE":
            row = store.delete_software_project(sp_id)
            return _json(
                R.command(
                    ["softwareproject"],
                    R.software_project(row, {"name": None, "software_version": None}),
                    "Software removed from project",
                    "be.cytomine.DeleteSoftwareProjectCommand",
                )
            )
        return _json(software_project_json(store.get_software_project(sp_id)))

    # ---- jobs
    @app.get("/api/job.json")
    @app.get("/api/project/<int:project_id>/job.json")
    def list_jobs(project_id: int | None = None) -> Response:
        project_id = project_id if project_id is not None else _arg_int("project")
        rows = store.list_jobs(project=project_id, software=_arg_int("software"))
        return _page([job_json(r) for r in rows])

    @app.post("/api/job.json")
    def add_job() -> Response:
        data = _body_dict()
        params = []
        for item in data.get("params") or data.get("jobParameters") or []:
            if isinstance(item, dict) and item.get("softwareParameter") is not None:
                params.append((as_int(item["softwareParameter"], "softwareParameter"), item.get("value")))
        job, user_job = store.create_job(data.get("project"), data.get("software"), _user(), params)
        return _json(R.command(["job"], job_json(job), f"Job {job['id']} added", "be.cytomine.AddJobCommand"))

    @app.get("/api/job/<int:job_id>.json")
    def get_job(job_id: int) -> Response:
        return _json(job_json(store.get_job(job_id)))

    @app.put("/api/job/<int:job_id>.json")
    def update_job(job_id: int) -> Response:
        row = store.update_job(job_id, _body_dict(), _user())
        return _json(R.command(["job"], job_json(row), f"Job {job_id} updated", "be.cytomine.EditJobCommand"))

    @app.delete("/api/job/<int:job_id>.json")
    def delete_job(job_id: int) -> Response:
        body = job_json(store.get_job(job_id))
        store.delete_job(job_id)
        return _json(R.command(["job"], body, f"Job {job_id} deleted", "be.cytomine.DeleteJobCommand"))

    def need_launcher() -> Launcher:
        if backend.launcher is None:
            raise BadRequest("This server runs no jobs (started without a launcher)")
        return backend.launcher

    @app.post("/api/job/<int:job_id>/execute.json")
    def execute_job(job_id: int) -> Response:
        if _user()["algo"]:
            raise Forbidden("A job user cannot execute jobs")
        row = need_launcher().execute(job_id, base_url(), wait=False)
        return _json(R.command(["job"], job_json(row), f"Job {job_id} launched", "be.cytomine.ExecuteJobCommand"))

    @app.post("/api/job/<int:job_id>/kill.json")
    def kill_job(job_id: int) -> Response:
        if _user()["algo"]:
            raise Forbidden("A job user cannot kill jobs")
        row = need_launcher().kill(job_id)
        return _json(R.command(["job"], job_json(row), f"Job {job_id} killed", "be.cytomine.EditJobCommand"))

    @app.get("/api/job/<int:job_id>/parameter.json")
    @app.get("/api/job/<int:job_id>/jobparameter.json")
    def list_job_parameters(job_id: int) -> Response:
        return _page([R.job_parameter(r, mask_keys=True) for r in store.list_job_parameters(job_id)])

    @app.post("/api/jobparameter.json")
    def add_job_parameter() -> Response:
        data = _body()
        items = data if isinstance(data, list) else [data]
        rows = []
        for item in items:
            if not isinstance(item, dict):
                raise BadRequest("A job parameter object is expected")
            job = store.get_job(as_int(item.get("job"), "job") or -1)
            user = _user()
            if user["algo"] and user["job_id"] != job["id"]:
                raise Forbidden(f"Job user {user['username']!r} cannot set parameters of job {job['id']}")
            rows.append(store.add_job_parameter(item.get("job"), item.get("softwareParameter"), item.get("value")))
        body = R.job_parameter(rows[-1]) if rows else {}
        return _json(
            R.command(
                ["jobparameter"], body, f"{len(rows)} job parameter(s) added", "be.cytomine.AddJobParameterCommand"
            )
        )

    @app.get("/api/jobparameter/<int:jp_id>.json")
    def get_job_parameter(jp_id: int) -> Response:
        return _json(R.job_parameter(store.get_job_parameter(jp_id), mask_keys=True))

    # ---- job data
    @app.post("/api/jobdata.json")
    def add_job_data() -> Response:
        data = _body_dict()
        row = store.create_job_data(data.get("job"), data.get("key"), data.get("filename"))
        return _json(
            R.command(
                ["jobdata"], R.job_data(row, base_url()), f"Job data {row['id']} added", "be.cytomine.AddJobDataCommand"
            )
        )

    @app.get("/api/job/<int:job_id>/jobdata.json")
    def list_job_data(job_id: int) -> Response:
        return _page([R.job_data(r, base_url()) for r in store.list_job_data(job_id)])

    @app.route("/api/jobdata/<int:data_id>.json", methods=["GET", "DELETE"])
    def job_data(data_id: int) -> Response:
        if request.method == "DELETE":
            row = store.delete_job_data(data_id)
            return _json(
                R.command(
                    ["jobdata"],
                    R.job_data(row, base_url()),
                    f"Job data {data_id} deleted",
                    "be.cytomine.DeleteJobDataCommand",
                )
            )
        return _json(R.job_data(store.get_job_data(data_id), base_url()))

    @app.post("/api/jobdata/<int:data_id>/upload")
    def upload_job_data(data_id: int) -> Response:
        upload = request.files.get("files[]") or next(iter(request.files.values()), None)
        if upload is None:
            raise BadRequest("No file in the request: send it as multipart/form-data field 'files[]'")
        row = store.upload_job_data(data_id, upload.filename or "data", upload.read())
        return _json(R.job_data(row, base_url()))

    @app.get("/api/jobdata/<int:data_id>/download")
    def download_job_data(data_id: int) -> Response:
        row = store.get_job_data(data_id)
        if not row["storage"]:
            raise NotFound(f"JobData {data_id} has no file yet: upload it first (POST /api/jobdata/{data_id}/upload)")
        return send_file(
            row["storage"], as_attachment=True, download_name=row["filename"], conditional=False, etag=False
        )
