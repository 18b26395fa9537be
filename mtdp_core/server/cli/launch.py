"""``mtdp server launch``: through the HTTP API of the server running on the data folder, as the
Cytomine web UI launches a job (create it with its parameters, then execute it), or on a server
started for the time of the job."""

from __future__ import annotations

import argparse
import json
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

from mtdp_core.errors import ConfigurationError
from mtdp_core.server.app import LocalCytomine, read_admin_keys, read_server_file
from mtdp_core.server.auth import authorization_header, legacy_token
from mtdp_core.server.cli.commands import data_folder, open_store
from mtdp_core.server.domain import STATUS_NAMES, SUCCESS, TERMINAL_STATUSES
from mtdp_core.server.errors import ServerError


def parse_params(items: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` options -> {name: value}."""
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(f"--param {item!r}: write NAME=VALUE")
        values[name.strip()] = value
    return values


def launch(args: argparse.Namespace) -> int:
    data = data_folder(args)
    params = parse_params(args.param)
    running = read_server_file(data)
    if running:
        return launch_remote(running["url"], data, args, params)
    if args.background:
        raise ConfigurationError(f"--background needs a running server: start 'mtdp server serve --data {data}' first")
    with LocalCytomine(data) as server:
        options = {"runner": args.runner, "image": args.image, "engine": args.engine, "timeout": args.timeout}
        try:
            job = server.launch(args.software, args.project, params, wait=True, user=args.user, **options)
        except ServerError as exc:
            raise ConfigurationError(exc.message) from None
        return report_job(job["id"], job["status"], job["status_comment"], job["progress"], data)


def report_job(job_id: int, status: int, comment: str | None, progress: int, data: Path) -> int:
    """Print how a job ended (and where its log is); exit status 0 for SUCCESS."""
    print(f"Job {job_id}: {STATUS_NAMES.get(status, status)} ({progress}%) {comment or ''}".rstrip())
    print(f"  log: {data / 'jobs' / str(job_id) / 'log.out'}")
    return 0 if status == SUCCESS else 1


def launch_remote(url: str, data: Path, args: argparse.Namespace, params: dict[str, str]) -> int:
    """Launch ``args.software`` on ``args.project`` through the server at ``url`` with the keys of
    ``--user`` (read from the data folder, which the operator owns); wait unless ``--background``."""
    keys = _user_keys(args, data)
    if args.runner or args.image or args.engine or args.timeout:
        raise ConfigurationError(
            "--runner/--image/--engine/--timeout apply when launch starts its own server: stop the "
            "running server, or register the app with the wanted local command"
        )
    api = Api(url, keys["public_key"], keys["private_key"])
    software = _software(api, args.software, url)
    project = next(
        (p for p in api.get("project.json")["collection"] if args.project in (str(p["id"]), p["name"])), None
    )
    if project is None:
        raise ConfigurationError(
            f"Project {args.project!r} does not exist on {url}, or user {args.user!r} is not a member of it "
            f"('mtdp server user add {args.user} --project {args.project}')"
        )
    body = {"project": project["id"], "software": software["id"], "params": _job_parameters(api, software, params)}
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
    return report_job(job["id"], job["status"], job["statusComment"], job["progress"], data)


def _user_keys(args: argparse.Namespace, data: Path) -> dict[str, str]:
    """The keys of the user who launches (``--user``): the admin's file, or the database."""
    if args.user == "admin":
        keys = read_admin_keys(data)
        if not keys:
            raise ConfigurationError(f"No admin keys in {data / 'admin-keys.json'}")
        return keys
    with open_store(args) as store:
        user = store.users.find_by_username(args.user)
        if user is None or user["algo"]:
            raise ConfigurationError(f"User {args.user!r} does not exist: create it with 'mtdp server user add'")
        return {"public_key": user["public_key"], "private_key": user["private_key"]}


def _software(api: Api, name: str, url: str) -> dict[str, Any]:
    """The software called ``name`` (or with that id or app name), newest non-deprecated first."""
    candidates = sorted(api.get("software.json")["collection"], key=lambda s: (s["deprecated"], -s["id"]))
    software = next((s for s in candidates if name in (str(s["id"]), s["name"], s.get("app"))), None)
    if software is None:
        raise ConfigurationError(f"Software {name!r} is not registered on {url}")
    return software


def _job_parameters(api: Api, software: dict[str, Any], params: dict[str, str]) -> list[dict[str, Any]]:
    """``[{softwareParameter, value}]`` for the given values; unknown names are refused."""
    parameters = api.get(f"software/{software['id']}/software_parameter.json", {"withSetByServer": "true"})
    by_name = {p["name"]: p for p in parameters["collection"]}
    unknown = [n for n in params if n not in by_name or by_name[n]["setByServer"]]
    if unknown:
        choices = ", ".join(n for n, p in by_name.items() if not p["setByServer"])
        raise ConfigurationError(f"Unknown parameter(s) {', '.join(unknown)}: this software has {choices}")
    return [{"softwareParameter": by_name[n]["id"], "value": v} for n, v in params.items()]


class Api:
    """A minimal signed JSON client for the CLI (the official client is a process-wide singleton)."""

    def __init__(self, url: str, public_key: str, private_key: str) -> None:
        import requests

        self.url = url.rstrip("/") + "/api/"
        self.keys = (public_key, private_key)
        self.session = requests.Session()

    def _call(self, method: str, path: str, params: dict[str, str] | None = None, body: Any = None) -> Any:
        import requests

        data = None if body is None else json.dumps(body)
        request = requests.Request(method, self.url + path, params=params, data=data).prepare()
        content_type = "application/json" if body is not None else ""
        date = formatdate(usegmt=True)
        token = legacy_token(method, "", content_type, date, request.path_url)
        request.headers.update(
            {"date": date, "accept": "application/json", "authorization": authorization_header(*self.keys, token)}
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
