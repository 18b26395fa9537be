"""Software from a Cytomine descriptor (``descriptors/<app>.json``, schema ``cytomine-0.1``).

Registration follows the Cytomine software router (``boutiques/Interpreter.groovy`` and
``repository/SoftwareManager.groovy``):

- every input becomes a SoftwareParameter, ``index`` 100, 200, ... in input order;
- ``value-key`` defaults to ``[@ID]``, ``command-line-flag`` to ``""``, ``name`` (human name)
  to ``@id``, ``default-value`` to ``""``; ``required`` is ``not optional``; in every string
  field ``@ID`` becomes the upper-cased id and ``@id`` the id;
- the type is lower-cased then capitalised (``ListDomain`` kept);
- ``executeCommand`` is ``"{container type} run {image name}-{version}.simg {command-line}"``
  and ``pullingCommand`` ``"singularity pull --name {image name}-{version}.simg docker://{image}:{version}"``,
  where the image name is the part of ``container-image.image`` after its first ``/``.

Registering the same name and version again updates the software in place (the developer
loop); a new version deprecates the previous ones, as the router does.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtdp_core.errors import ConfigurationError
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.domain import CLASS_NAMES, PARAMETER_TYPES, Row, parameter_type

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "cytomine-0.1"
INDEX_STEP = 100


@dataclass(frozen=True)
class ParameterSpec:
    """One input of a descriptor, as the router turns it into a SoftwareParameter."""

    name: str
    type: str
    human_name: str
    value_key: str
    command_line_flag: str
    default_value: str
    required: bool
    set_by_server: bool
    server_parameter: bool
    index: int
    description: str | None = None
    uri: str | None = None
    uri_print_attribut: str | None = None
    uri_sort_attribut: str | None = None

    def as_store_data(self, software_id: int) -> dict[str, Any]:
        return {
            "software": software_id,
            "name": self.name,
            "type": self.type,
            "defaultValue": self.default_value,
            "required": self.required,
            "index": self.index,
            "setByServer": self.set_by_server,
            "serverParameter": self.server_parameter,
            "humanName": self.human_name,
            "valueKey": self.value_key,
            "commandLineFlag": self.command_line_flag,
            "uri": self.uri,
            "uriPrintAttribut": self.uri_print_attribut,
            "uriSortAttribut": self.uri_sort_attribut,
        }


@dataclass(frozen=True)
class SoftwareSpec:
    """A parsed descriptor."""

    name: str
    command_line: str
    image: str
    image_type: str
    parameters: tuple[ParameterSpec, ...]
    description: str | None = None
    source: str | None = None

    @property
    def image_name(self) -> str:
        """The router's image name: what follows the first ``/`` of the image."""
        return self.image[self.image.index("/") + 1 :] if "/" in self.image else self.image

    def execute_command(self, version: str | None) -> str:
        return f"{self.image_type} run {self.image_name}-{version or 'latest'}.simg {self.command_line}"

    def pulling_command(self, version: str | None) -> str:
        tag = version or "latest"
        return f"singularity pull --name {self.image_name}-{tag}.simg docker://{self.image}:{tag}"


def _text(value: Any) -> str:
    """A JSON value as the router stores it (Groovy ``as String``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def parse_descriptor(data: Any, source: str = "<descriptor>") -> SoftwareSpec:
    """Validate and parse a descriptor; errors name the field and say what to write."""
    if not isinstance(data, dict):
        raise ConfigurationError(f"{source}: a descriptor is a JSON object, got {type(data).__name__}")
    missing = [key for key in ("name", "command-line", "inputs", "container-image") if not data.get(key)]
    if missing:
        raise ConfigurationError(
            f"{source}: missing field(s) {', '.join(missing)}: a cytomine-0.1 descriptor needs "
            "name, command-line, container-image {image, type} and inputs"
        )
    version = data.get("schema-version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ConfigurationError(f"{source}: schema-version {version!r} is not supported: use {SCHEMA_VERSION!r}")
    container = data["container-image"]
    if not isinstance(container, dict) or not container.get("image") or not container.get("type"):
        raise ConfigurationError(
            f"{source}: container-image needs 'image' and 'type' (e.g. "
            '{"image": "myorg/s_myapp", "type": "singularity"})'
        )
    if not isinstance(data["inputs"], list):
        raise ConfigurationError(f"{source}: inputs must be a list of objects")
    parameters: list[ParameterSpec] = []
    seen: set[str] = set()
    for position, item in enumerate(data["inputs"]):
        parameters.append(_parse_input(item, position, source))
        if parameters[-1].name in seen:
            raise ConfigurationError(f"{source}: input id {parameters[-1].name!r} appears twice: ids must be unique")
        seen.add(parameters[-1].name)
    command_line = str(data["command-line"])
    for p in parameters:
        if not p.server_parameter and not re.search(_key_regex(p.value_key), command_line):
            logger.warning(
                "%s: input %r has value-key %r, absent from the command line: it is never passed",
                source,
                p.name,
                p.value_key,
            )
    return SoftwareSpec(
        name=str(data["name"]),
        command_line=command_line,
        image=str(container["image"]),
        image_type=str(container["type"]),
        parameters=tuple(parameters),
        description=data.get("description"),
        source=source,
    )


def _parse_input(item: Any, position: int, source: str) -> ParameterSpec:
    if not isinstance(item, dict):
        raise ConfigurationError(f"{source}: input {position} is not an object")
    ident = item.get("id")
    if not isinstance(ident, str) or not ident:
        raise ConfigurationError(f"{source}: input {position} has no 'id' (the parameter name)")
    if not item.get("type"):
        raise ConfigurationError(f"{source}: input {ident!r} has no 'type': use one of {', '.join(PARAMETER_TYPES)}")

    def expand(value: Any) -> str:
        return _text(value).replace("@ID", ident.upper()).replace("@id", ident)

    ptype = parameter_type(str(item["type"]))
    if ptype is None:
        raise ConfigurationError(
            f"{source}: input {ident!r} has type {item['type']!r}: use one of {', '.join(PARAMETER_TYPES)}"
        )
    optional = item.get("optional", False)
    return ParameterSpec(
        name=ident,
        type=ptype,
        human_name=expand(item.get("name") or "@id"),
        value_key=expand(item.get("value-key") or "[@ID]"),
        command_line_flag=expand(item.get("command-line-flag") or ""),
        default_value=expand(item["default-value"]) if item.get("default-value") is not None else "",
        required=not _is_true(optional),
        set_by_server=_is_true(item.get("set-by-server", False)),
        server_parameter=_is_true(item.get("server-parameter", False)),
        index=INDEX_STEP * (position + 1),
        description=expand(item["description"]) if item.get("description") else None,
        uri=expand(item["uri"]) if item.get("uri") else None,
        uri_print_attribut=expand(item["uri-print-attribute"]) if item.get("uri-print-attribute") else None,
        uri_sort_attribut=expand(item["uri-sort-attribute"]) if item.get("uri-sort-attribute") else None,
    )


def _key_regex(value_key: str) -> str:
    """The core's regex for a value key: the key with ``[`` and ``]`` escaped, nothing else."""
    return value_key.replace("[", "\\[").replace("]", "\\]")


def load_descriptor(path: str | Path) -> SoftwareSpec:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"Descriptor {path} does not exist: give the path of descriptors/<app>.json") from None
    except ValueError as exc:
        raise ConfigurationError(f"Descriptor {path} is not valid JSON: {exc}") from None
    return parse_descriptor(data, str(path))


def default_local_command(descriptor_path: str | Path) -> list[str] | None:
    """``[python, workflows/<stem>/run.py]`` when that script exists next to the descriptors folder."""
    path = Path(descriptor_path).resolve()
    script = path.parent.parent / "workflows" / path.stem / "run.py"
    return [sys.executable, str(script)] if script.is_file() else None


def parse_local_command(command: str | list[str], cwd: Path | None = None) -> list[str]:
    """Split a local command and make its existing relative paths absolute (jobs run elsewhere)."""
    tokens = shlex.split(command) if isinstance(command, str) else list(command)
    if not tokens:
        raise ConfigurationError('Empty --local-command: give e.g. "python workflows/myapp/run.py"')
    base = cwd or Path.cwd()
    resolved = []
    for token in tokens:
        candidate = base / token
        resolved.append(str(candidate.resolve()) if not Path(token).is_absolute() and candidate.exists() else token)
    if resolved[0] in ("python", "python3"):
        resolved[0] = sys.executable
    return resolved


def register_software(
    store: CytomineStore,
    spec: SoftwareSpec,
    *,
    version: str | None = None,
    local_command: list[str] | None = None,
    descriptor: dict[str, Any] | None = None,
    app: str | None = None,
) -> Row:
    """Create (or update, for the same name and version) the Software and its parameters."""
    fields = {
        "name": spec.name,
        "softwareVersion": version,
        "executeCommand": spec.execute_command(version),
        "pullingCommand": spec.pulling_command(version),
        "commandLine": spec.command_line,
        "containerImage": spec.image,
        "imageType": spec.image_type,
        "localCommand": local_command,
        "descriptor": descriptor,
        "app": app or (Path(spec.source).stem if spec.source else None),
    }
    with store.transaction():
        existing = _registered(store, spec.name, version)
        if existing is None:
            software = store.software.create(fields)
            for other in store.software.list():
                if other["name"] == spec.name and other["id"] != software["id"] and not other["deprecated"]:
                    store.software.update(other["id"], {"deprecated": True})
        else:
            software = store.software.update(existing["id"], {**fields, "deprecated": False})
        _sync_parameters(store, software["id"], spec)
    logger.info(
        "software %s (id %d, version %s) registered with %d parameters",
        spec.name,
        software["id"],
        version or "-",
        len(spec.parameters),
    )
    return store.software.get(software["id"])


def _registered(store: CytomineStore, name: str, version: str | None) -> Row | None:
    """The software registered under this name and version (None: unversioned)."""
    if version is not None:
        return store.software.find(name, version)
    return next((s for s in store.software.list() if s["name"] == name and s["software_version"] is None), None)


def _sync_parameters(store: CytomineStore, software_id: int, spec: SoftwareSpec) -> None:
    """Make the software's parameters and descriptions those of the descriptor."""
    current = {p["name"]: p for p in store.software.list_parameters(software_id)}
    for parameter in spec.parameters:
        data = parameter.as_store_data(software_id)
        if parameter.name in current:
            store.software.update_parameter(current.pop(parameter.name)["id"], data)
        else:
            store.software.add_parameter(data)
    for stale in current.values():
        store.software.delete_parameter(stale["id"])
    if spec.description:
        store.meta.set_description(CLASS_NAMES["software"], software_id, spec.description)
    ids = {p["name"]: p["id"] for p in store.software.list_parameters(software_id)}
    for parameter in spec.parameters:
        if parameter.description:
            store.meta.set_description(CLASS_NAMES["softwareparameter"], ids[parameter.name], parameter.description)
