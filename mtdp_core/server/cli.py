"""``mtdp server``: run the local Cytomine-compatible server and manage its data folder.

Sub-commands: ``serve``, ``import``, ``register-app``, ``launch``, ``user add``/``user list``,
``info``. All work on a data folder (``--data``, or ``$MTDP_SERVER_DATA``). ``launch`` uses
the server running on that folder when there is one, and otherwise starts one for the time
of the job.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mtdp_core.errors import ConfigurationError
from mtdp_core.server.app import LocalCytomine, read_admin_keys, read_server_file
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.errors import ServerError
from mtdp_core.server.importers import FORMATS, ColumnNames, import_folder
from mtdp_core.server.models import TERMINAL_STATUSES, CytomineStore

logger = logging.getLogger(__name__)

STATUS_NAMES = {
    0: "NOT_LAUNCH",
    1: "INQUEUE",
    2: "RUNNING",
    3: "SUCCESS",
    4: "FAILED",
    5: "INDETERMINATE",
    6: "WAIT",
    7: "PREVIEWED",
    8: "KILLED",
}

DESCRIPTION = """\
A local Cytomine-compatible server: the official cytomine-python-client (3.0.0 with its job
API, or 4.x for data) talks to it over HTTP as to a real Cytomine core. It keeps projects,
images, annotations, terms, properties, attached files, software and jobs in a SQLite
database in a data folder, serves annotation crops cut from the image files, and runs
Cytomine apps from their descriptors as a processing server would.
"""

EPILOG = """\
examples:
  mtdp server serve --data mtdp-data --port 8080
  mtdp server import --data mtdp-data --project bccd ../shared/data/bccd/JPEGImages \
      --annotations ../shared/data/bccd/boxes.csv
  mtdp server register-app --data mtdp-data descriptors/svm_train.json
  mtdp server launch svm_train --data mtdp-data --project bccd --param balanced_classes=true
  mtdp server user add alice --data mtdp-data

The data folder can also be given as $MTDP_SERVER_DATA. See docs/local_server.md.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "server",
        help="the local Cytomine-compatible server (serve, import, launch apps)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="server_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _missing_subcommand(parser))

    def data_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data",
            type=Path,
            default=os.environ.get("MTDP_SERVER_DATA"),
            help="data folder: database, files, job logs (default: $MTDP_SERVER_DATA)",
        )

    serve = commands.add_parser(
        "serve",
        help="run the server until Ctrl-C",
        description="Run the server on a data folder (created when new) until Ctrl-C. Prints its URL and the admin "
        "keys (also written to DATA/admin-keys.json, readable by you only). Every request is logged.",
    )
    data_arg(serve)
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default: 0, a free port)")
    serve.add_argument(
        "--public-key",
        default=os.environ.get("MTDP_SERVER_PUBLIC_KEY"),
        help="admin public key to use (default: $MTDP_SERVER_PUBLIC_KEY, else kept or generated)",
    )
    serve.add_argument(
        "--private-key",
        default=os.environ.get("MTDP_SERVER_PRIVATE_KEY"),
        help="admin private key (default: $MTDP_SERVER_PRIVATE_KEY)",
    )
    serve.add_argument(
        "--public-url",
        default=None,
        help="base URL written in cropURL and given to jobs (default: the URL each request used)",
    )
    serve.add_argument(
        "--crop-max-size",
        default="256",
        help="longest side of a crop asked without maxSize: a number (256, the Spring core's default) "
        "or 'none' for full resolution (the Grails core's behaviour)",
    )
    serve.set_defaults(func=_cmd_serve)

    imp = commands.add_parser(
        "import",
        help="import a folder of images and their annotations into a project",
        description="Import images (a folder) and annotations (GeoJSON, CSV of boxes or WKT, Pascal VOC XML) into a "
        "project, created when new, with an ontology whose terms are the labels. Image coordinates "
        "(top-left origin) are converted to Cytomine's (bottom-left origin). Images already in the "
        "project are skipped, so an import can be re-run.",
    )
    data_arg(imp)
    imp.add_argument("images", type=Path, help="folder of images (searched recursively)")
    imp.add_argument("--project", required=True, help="project name (created when it does not exist)")
    imp.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="a .csv file, a .geojson file, or a folder of .geojson / VOC .xml files (default: none)",
    )
    imp.add_argument("--format", default="auto", choices=FORMATS, help="annotation format (default: from the files)")
    imp.add_argument("--image-column", default=None, help="CSV column / GeoJSON property naming the image")
    imp.add_argument("--label-column", default=None, help="CSV column / GeoJSON property holding the label")
    imp.add_argument("--geometry-column", default=None, help="CSV column holding a WKT geometry")
    imp.add_argument("--box-columns", default=None, help="CSV box columns, in the order xmin,ymin,xmax,ymax")
    imp.add_argument(
        "--copy", action="store_true", help="copy the images into the data folder (default: use them in place)"
    )
    imp.add_argument("--only-annotated", action="store_true", help="skip images without annotations")
    imp.add_argument("--limit", type=int, default=None, help="import only the first N images (by name)")
    imp.add_argument("--user", default="admin", help="owner of the images and annotations (default: admin)")
    imp.set_defaults(func=_cmd_import)

    reg = commands.add_parser(
        "register-app",
        help="register a Cytomine app from its descriptor",
        description="Create the Software and its parameters from a cytomine-0.1 descriptor, as the Cytomine software "
        "router does (index order, value keys, flags, defaults, set-by-server parameters). Registering the "
        "same name and version again updates it.",
    )
    data_arg(reg)
    reg.add_argument("descriptor", type=Path, help="descriptors/<app>.json")
    reg.add_argument(
        "--local-command",
        default=None,
        help="command that replaces the container's executable when run locally, e.g. "
        '"python workflows/svm_train/run.py" (default: that script when it exists next to the '
        "descriptors folder)",
    )
    reg.add_argument("--version", default=None, help="software version (the image tag; default: none)")
    reg.set_defaults(func=_cmd_register)

    launch = commands.add_parser(
        "launch",
        help="launch a registered app on a project, as from the Cytomine web UI",
        description="Create a job (with its own job user and keys) and its parameters, build the command line exactly "
        "as Cytomine does and run it: locally (the app's script) or in a container. Waits for the end and "
        "exits 0 when the job succeeded. Uses the server running on --data, or starts one meanwhile.",
    )
    data_arg(launch)
    launch.add_argument("software", help="software name (or id)")
    launch.add_argument("--project", required=True, help="project name (or id)")
    launch.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter value (repeat for several); unset parameters take their default",
    )
    launch.add_argument(
        "--runner",
        choices=["local", "container"],
        default=None,
        help="local (default when the app has a local command) or container",
    )
    launch.add_argument("--image", default=None, help="container image (default: the descriptor's)")
    launch.add_argument(
        "--engine", default=None, help="container engine: podman or docker (default: whichever is installed)"
    )
    launch.add_argument("--timeout", type=float, default=None, help="kill the job after this many seconds")
    launch.add_argument(
        "--background",
        action="store_true",
        help="return once the job started (needs a running server: 'mtdp server serve')",
    )
    launch.set_defaults(func=_cmd_launch)

    user = commands.add_parser("user", help="manage users (add, list)")
    user_commands = user.add_subparsers(dest="user_command", metavar="ACTION")
    user.set_defaults(func=lambda args: _missing_subcommand(user))
    add = user_commands.add_parser(
        "add",
        help="create a user and print its keys",
        description="Create a user with new API keys (printed, keep them).",
    )
    data_arg(add)
    add.add_argument("username")
    add.add_argument("--admin", action="store_true", help="make it an administrator")
    add.add_argument("--email", default=None)
    add.add_argument("--firstname", default=None)
    add.add_argument("--lastname", default=None)
    add.set_defaults(func=_cmd_user_add)
    lst = user_commands.add_parser("list", help="list users (no keys)")
    data_arg(lst)
    lst.set_defaults(func=_cmd_user_list)

    info = commands.add_parser("info", help="what the data folder holds: projects, images, annotations, software, jobs")
    data_arg(info)
    info.set_defaults(func=_cmd_info)


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _data(args: argparse.Namespace) -> Path:
    if args.data is None:
        raise ConfigurationError("No data folder: give --data DIR (or set $MTDP_SERVER_DATA)")
    return Path(args.data)


def _store(args: argparse.Namespace) -> CytomineStore:
    data = _data(args)
    store = CytomineStore(data / "cytomine.sqlite3", data / "files")
    store.ensure_admin()
    return store


def _cmd_serve(args: argparse.Namespace) -> int:
    max_size = None if str(args.crop_max_size).lower() in ("none", "0", "full") else int(args.crop_max_size)
    config = ServerConfig(public_url=args.public_url, crop_default_max_size=max_size)
    data = _data(args)
    running = read_server_file(data)
    if running:
        raise ConfigurationError(
            f"A server already runs on {data} at {running['url']} (pid {running['pid']}): stop it "
            "first or use another --data folder"
        )
    server = LocalCytomine(
        data, host=args.host, port=args.port, public_key=args.public_key, private_key=args.private_key, config=config
    )

    def _terminate(signum: int, frame: object) -> None:  # `docker stop` / `kill`: stop as cleanly as Ctrl-C
        raise KeyboardInterrupt

    # Handlers first, then unblock, all inside the try: a signal that was pending (blocked by the
    # parent) or arrives during start-up stops the server cleanly too. A background job of a script
    # (`mtdp server serve &`, nohup) starts with SIGINT ignored, which Python keeps, and a parent
    # that had the signals blocked passes its mask on: Ctrl-C / kill -INT / kill must still work.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        server.start()
        print(f"Local Cytomine server: {server.url}")
        print(f"  admin public key:  {server.public_key}")
        print(f"  admin private key: {server.private_key}")
        print(f"  data folder: {data.resolve()} (keys also in {data / 'admin-keys.json'})")
        print(f"Connect: Cytomine('{server.url}', PUBLIC_KEY, PRIVATE_KEY). Stop with Ctrl-C.", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    box = tuple(c.strip() for c in args.box_columns.split(",")) if args.box_columns else None
    if box is not None and len(box) != 4:
        raise ConfigurationError(f"--box-columns {args.box_columns!r}: give four names, xmin,ymin,xmax,ymax")
    columns = ColumnNames(image=args.image_column, label=args.label_column, geometry=args.geometry_column, box=box)  # type: ignore[arg-type]
    data = _data(args)
    store = _store(args)
    try:
        start = time.perf_counter()
        report = import_folder(
            store,
            args.project,
            args.images,
            args.annotations,
            fmt=args.format,
            columns=columns,
            copy_to=data / "images" / args.project if args.copy else None,
            user=args.user,
            only_annotated=args.only_annotated,
            limit=args.limit,
        )
        print(f"Imported in {time.perf_counter() - start:.1f} s: {report.summary()}")
        terms = store.list_terms(project=report.project["id"])
        print("Terms: " + ", ".join(f"{t['name']} ({t['id']})" for t in terms))
    finally:
        store.close()
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from mtdp_core.server import descriptors

    store = _store(args)
    try:
        spec = descriptors.load_descriptor(args.descriptor)
        command = (
            descriptors.parse_local_command(args.local_command)
            if args.local_command
            else descriptors.default_local_command(args.descriptor)
        )
        raw = json.loads(Path(args.descriptor).read_text(encoding="utf-8"))
        software = descriptors.register_software(
            store, spec, version=args.version, local_command=command, descriptor=raw
        )
        params = store.list_software_parameters(software["id"])
        print(f"Software {software['name']!r} registered: id {software['id']}, {len(params)} parameters")
        print(f"  Cytomine command: {software['execute_command']}")
        print(f"  local command: {' '.join(command) if command else '(none: launch with --runner container)'}")
        for p in params:
            flags = (
                "set by server"
                if p["set_by_server"]
                else ("required" if p["required"] else f"default {p['default_value']!r}")
            )
            print(f"  {p['idx']:>5}  {p['name']:<28} {p['type']:<10} {flags}")
    finally:
        store.close()
    return 0


def _parse_params(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(f"--param {item!r}: write NAME=VALUE")
        values[name.strip()] = value
    return values


def _cmd_launch(args: argparse.Namespace) -> int:
    data = _data(args)
    params = _parse_params(args.param)
    running = read_server_file(data)
    if running:
        return _launch_remote(running["url"], data, args, params)
    if args.background:
        raise ConfigurationError(f"--background needs a running server: start 'mtdp server serve --data {data}' first")
    with LocalCytomine(data) as server:
        try:
            job = server.launch(
                args.software,
                args.project,
                params,
                wait=True,
                runner=args.runner,
                image=args.image,
                engine=args.engine,
                timeout=args.timeout,
            )
        except ServerError as exc:
            raise ConfigurationError(exc.message) from None
        return _report_job(job["id"], job["status"], job["status_comment"], job["progress"], data)


def _report_job(job_id: int, status: int, comment: str | None, progress: int, data: Path) -> int:
    print(f"Job {job_id}: {STATUS_NAMES.get(status, status)} ({progress}%) {comment or ''}".rstrip())
    print(f"  log: {data / 'jobs' / str(job_id) / 'log.out'}")
    return 0 if status == 3 else 1


def _launch_remote(url: str, data: Path, args: argparse.Namespace, params: dict[str, str]) -> int:
    """Launch through the running server's HTTP API (as the web UI does)."""
    keys = read_admin_keys(data)
    if not keys:
        raise ConfigurationError(f"No admin keys in {data / 'admin-keys.json'}")
    api = _Api(url, keys["public_key"], keys["private_key"])
    softwares = api.get("software.json")["collection"]
    software = next(
        (
            s
            for s in sorted(softwares, key=lambda s: (s["deprecated"], -s["id"]))
            if args.software in (str(s["id"]), s["name"], s.get("app"))
        ),
        None,
    )
    if software is None:
        raise ConfigurationError(f"Software {args.software!r} is not registered on {url}")
    projects = api.get("project.json")["collection"]
    project = next((p for p in projects if str(p["id"]) == args.project or p["name"] == args.project), None)
    if project is None:
        raise ConfigurationError(f"Project {args.project!r} does not exist on {url}")
    if args.runner or args.image or args.engine or args.timeout:
        raise ConfigurationError(
            "--runner/--image/--engine/--timeout apply when launch starts its own server: stop the "
            "running server, or register the app with the wanted local command"
        )
    parameters = api.get(f"software/{software['id']}/software_parameter.json", {"withSetByServer": "true"})[
        "collection"
    ]
    by_name = {p["name"]: p for p in parameters}
    unknown = [n for n in params if n not in by_name or by_name[n]["setByServer"]]
    if unknown:
        raise ConfigurationError(
            f"Unknown parameter(s) {', '.join(unknown)}: this software has "
            + ", ".join(p["name"] for p in parameters if not p["setByServer"])
        )
    body = {
        "project": project["id"],
        "software": software["id"],
        "params": [{"softwareParameter": by_name[n]["id"], "value": v} for n, v in params.items()],
    }
    job = api.post("job.json", body)["job"]
    job = api.post(f"job/{job['id']}/execute.json", {})["job"]
    print(f"Job {job['id']} launched on {url}")
    if args.background:
        return 0
    while job["status"] not in TERMINAL_STATUSES:
        time.sleep(0.5)
        job = api.get(f"job/{job['id']}.json")
        if job.get("process") == "exited" and job["status"] not in TERMINAL_STATUSES:
            break
    return _report_job(job["id"], job["status"], job["statusComment"], job["progress"], data)


class _Api:
    """A minimal signed JSON client for the CLI (the official client is a process-wide singleton)."""

    def __init__(self, url: str, public_key: str, private_key: str) -> None:
        import requests

        self.url = url.rstrip("/") + "/api/"
        self.keys = (public_key, private_key)
        self.session = requests.Session()

    def _call(self, method: str, path: str, params: dict[str, str] | None = None, body: Any = None) -> Any:
        from email.utils import formatdate

        import requests

        from mtdp_core.server.auth import authorization_header, legacy_token

        request = requests.Request(
            method, self.url + path, params=params, data=None if body is None else json.dumps(body)
        ).prepare()
        content_type = "application/json" if body is not None else ""
        date = formatdate(usegmt=True)
        path_and_query = request.path_url
        request.headers.update(
            {
                "date": date,
                "accept": "application/json",
                "authorization": authorization_header(
                    *self.keys, legacy_token(method, "", content_type, date, path_and_query)
                ),
            }
        )
        if content_type:
            request.headers["content-type"] = content_type
        response = self.session.send(request, timeout=60)
        try:
            payload = response.json()
        except ValueError:
            payload = {"message": response.text}
        if response.status_code != 200:
            raise ConfigurationError(f"{method} {path} failed ({response.status_code}): {payload.get('message')}")
        return payload

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self._call("GET", path, params)

    def post(self, path: str, body: Any) -> Any:
        return self._call("POST", path, body=body)


def _cmd_user_add(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        user = store.create_user(
            args.username, firstname=args.firstname, lastname=args.lastname, email=args.email, admin=args.admin
        )
    except ServerError as exc:
        raise ConfigurationError(exc.message) from None
    finally:
        store.close()
    print(f"User {user['username']!r} (id {user['id']}{', admin' if user['is_admin'] else ''})")
    print(f"  public key:  {user['public_key']}")
    print(f"  private key: {user['private_key']}")
    return 0


def _cmd_user_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        for user in store.list_users():
            print(f"{user['id']:>6}  {user['username']:<24} {'admin' if user['is_admin'] else 'user'}")
    finally:
        store.close()
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        running = read_server_file(_data(args))
        print(f"Server: {'running at ' + running['url'] if running else 'not running'}")
        projects = store.list_projects()
        counts = store.project_counts([p["id"] for p in projects])
        print(f"Projects ({len(projects)}):")
        for p in projects:
            c = counts[p["id"]]
            terms = ", ".join(t["name"] for t in store.list_terms(project=p["id"]))
            print(
                f"  {p['id']:>6}  {p['name']:<24} {c['images']} images, {c['user']} annotations, "
                f"{c['algo']} job annotations; terms: {terms or '-'}"
            )
        software = store.list_software()
        print(f"Software ({len(software)}):")
        for s in software:
            deprecated = " (deprecated)" if s["deprecated"] else ""
            print(f"  {s['id']:>6}  {s['name']:<24} {s['software_version'] or ''}{deprecated}")
        jobs = store.list_jobs()
        print(f"Jobs ({len(jobs)}):")
        for j in jobs[:20]:
            print(
                f"  {j['id']:>6}  software {j['software_id']} project {j['project_id']}: "
                f"{STATUS_NAMES.get(j['status'])} {j['progress']}% {j['status_comment'] or ''}"
            )
    finally:
        store.close()
    return 0
