"""What each ``mtdp server`` command does (the options are in :mod:`.arguments`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from mtdp_core.errors import ConfigurationError
from mtdp_core.server import descriptors
from mtdp_core.server.app import DATABASE_NAME, LocalCytomine, read_server_file
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.backends.database import private_folder
from mtdp_core.server.config import MIB, PixelLimits, ServerConfig
from mtdp_core.server.domain import STATUS_NAMES, Row
from mtdp_core.server.errors import ServerError
from mtdp_core.server.importers import ColumnNames, import_folder


def data_folder(args: argparse.Namespace) -> Path:
    if args.data is None:
        raise ConfigurationError("No data folder: give --data DIR (or set $MTDP_SERVER_DATA)")
    return Path(args.data)


@contextlib.contextmanager
def open_store(args: argparse.Namespace) -> Iterator[CytomineStore]:
    """The store of the data folder (with its admin), closed at the end."""
    data = private_folder(data_folder(args))
    store = CytomineStore(data / DATABASE_NAME, data / "files")
    try:
        store.users.ensure_admin()
        yield store
    except ServerError as exc:
        raise ConfigurationError(exc.message) from None
    finally:
        store.close()


def serve_config(args: argparse.Namespace) -> ServerConfig:
    """The server's settings from the options of ``mtdp server serve``."""
    max_size = None if str(args.crop_max_size).lower() in ("none", "0", "full") else int(args.crop_max_size)
    return ServerConfig(
        public_url=args.public_url,
        crop_default_max_size=max_size,
        max_clock_skew=args.max_clock_skew,
        max_body_bytes=int(args.max_body_mb * MIB),
        max_upload_bytes=int(args.max_upload_mb * MIB),
        pixel_limits=PixelLimits(max_pixels=args.max_pixels, max_upscale=args.max_upscale),
    )


def serve(args: argparse.Namespace) -> int:
    config = serve_config(args)
    data = data_folder(args)
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


def import_(args: argparse.Namespace) -> int:
    box = tuple(c.strip() for c in args.box_columns.split(",")) if args.box_columns else None
    if box is not None and len(box) != 4:
        raise ConfigurationError(f"--box-columns {args.box_columns!r}: give four names, xmin,ymin,xmax,ymax")
    columns = ColumnNames(image=args.image_column, label=args.label_column, geometry=args.geometry_column, box=box)  # type: ignore[arg-type]
    copy_to = data_folder(args) / "images" / args.project if args.copy else None
    with open_store(args) as store:
        start = time.perf_counter()
        report = import_folder(
            store,
            args.project,
            args.images,
            args.annotations,
            fmt=args.format,
            columns=columns,
            copy_to=copy_to,
            user=args.user,
            only_annotated=args.only_annotated,
            limit=args.limit,
        )
        print(f"Imported in {time.perf_counter() - start:.1f} s: {report.summary()}")
        terms = store.projects.terms(report.project["id"])
        print("Terms: " + ", ".join(f"{t['name']} ({t['id']})" for t in terms))
    return 0


def register_app(args: argparse.Namespace) -> int:
    with open_store(args) as store:
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
        params = store.software.list_parameters(software["id"])
        print(f"Software {software['name']!r} registered: id {software['id']}, {len(params)} parameters")
        print(f"  Cytomine command: {software['execute_command']}")
        print(f"  local command: {' '.join(command) if command else '(none: launch with --runner container)'}")
        for p in params:
            if p["set_by_server"]:
                flags = "set by server"
            else:
                flags = "required" if p["required"] else f"default {p['default_value']!r}"
            print(f"  {p['idx']:>5}  {p['name']:<28} {p['type']:<10} {flags}")
    return 0


def find_project(store: CytomineStore, project: str) -> Row:
    """A project of the data folder by name or id."""
    row = store.projects.find_by_name(project)
    if row is None and project.isdigit():
        row = store.db.one("SELECT * FROM project WHERE id = ?", (int(project),))
    if row is None:
        names = ", ".join(p["name"] for p in store.projects.list()) or "none"
        raise ConfigurationError(f"Project {project!r} does not exist (projects: {names})")
    return row


def user_add(args: argparse.Namespace) -> int:
    """Create a user (and print its keys), or, with --project, add an existing one to projects."""
    if args.manager and not args.project:
        raise ConfigurationError("--manager needs --project P: the project the user manages")
    with open_store(args) as store, store.transaction():
        projects = [find_project(store, p) for p in args.project]
        user = store.users.find_by_username(args.username) if args.project else None
        created = user is None
        if created:
            user = store.users.create(
                args.username, firstname=args.firstname, lastname=args.lastname, email=args.email, admin=args.admin
            )
        for project in projects:
            store.projects.add_member(project["id"], user["id"], manager=args.manager)
    if created:
        print(f"User {user['username']!r} (id {user['id']}{', admin' if user['is_admin'] else ''})")
        print(f"  public key:  {user['public_key']}")
        print(f"  private key: {user['private_key']}")
    for project in projects:
        role = "manager" if args.manager else "member"
        print(f"User {user['username']!r} is a {role} of project {project['name']!r} (id {project['id']})")
    return 0


def user_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        names = {p["id"]: p["name"] for p in store.projects.list()}
        for user in store.users.list():
            kind = "admin" if user["is_admin"] else "user"
            roles = []
            for pid in store.projects.member_projects(user["id"]):
                roles.append(names[pid] + (" (manager)" if store.projects.role(pid, user["id"]) == "manager" else ""))
            print(f"{user['id']:>6}  {user['username']:<24} {kind:<6} {', '.join(roles) or '-'}")
    return 0


def info(args: argparse.Namespace) -> int:
    running = read_server_file(data_folder(args))
    print(f"Server: {'running at ' + running['url'] if running else 'not running'}")
    with open_store(args) as store:
        projects = store.projects.list()
        counts = store.projects.counts([p["id"] for p in projects])
        print(f"Projects ({len(projects)}):")
        for p in projects:
            c = counts[p["id"]]
            terms = ", ".join(t["name"] for t in store.projects.terms(p["id"]))
            print(
                f"  {p['id']:>6}  {p['name']:<24} {c['images']} images, {c['user']} annotations, "
                f"{c['algo']} job annotations; terms: {terms or '-'}"
            )
        software = store.software.list()
        print(f"Software ({len(software)}):")
        for s in software:
            deprecated = " (deprecated)" if s["deprecated"] else ""
            print(f"  {s['id']:>6}  {s['name']:<24} {s['software_version'] or ''}{deprecated}")
        jobs = store.jobs.list()
        print(f"Jobs ({len(jobs)}):")
        for j in jobs[:20]:
            status = f"{STATUS_NAMES.get(j['status'])} {j['progress']}% {j['status_comment'] or ''}"
            print(f"  {j['id']:>6}  software {j['software_id']} project {j['project_id']}: {status}")
    return 0
