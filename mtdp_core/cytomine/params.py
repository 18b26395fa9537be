"""App parameters: one argparse parser per app that is also the source of its descriptor.

Each input of a Cytomine descriptor is declared once, with :func:`add_input`, as an argparse
option of the app's ``run.py`` parser; the declaration carries what the descriptor needs
(Cytomine type, set-by-server, ``uri`` of a ListDomain picker, human name, description).
:func:`build_descriptor` turns a parser into the ``cytomine-0.1`` descriptor, so the
``descriptors/*.json`` files and the ``run.py`` flags cannot drift apart (a test regenerates
them and compares).

Values come from Cytomine as text (``"12,13"``, ``"true"``, ``"0.5"``); the converters here
type and check them, and :class:`AppArgumentParser` turns any argparse error into a
:class:`ParameterError` whose message leads with the fix and names the input
(``"Set batch_size to a whole number of at least 1 (got 'abc')."``) instead of exiting the
process, so that the job can be set FAILED with it.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mtdp_core.cytomine.errors import ParameterError

CYTOMINE_TYPES = ("String", "Number", "Boolean", "Domain", "ListDomain", "List", "Date")
#: Title of the argument group whose options are not descriptor inputs.
LOCAL_GROUP_TITLE = "local runs and BIAFLOWS"


@dataclass(frozen=True)
class InputSpec:
    """What a descriptor says of one input (see cytomine_wire_facts.md, section 2)."""

    id: str
    type: str
    name: str
    description: str
    default: Any = None
    optional: bool = True
    set_by_server: bool = False
    uri: str | None = None
    uri_print_attribute: str | None = None
    uri_sort_attribute: str | None = None
    values_choice: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: What the values are (one of :data:`VALUE_KINDS`, from the converter): how front ends that
    #: type their inputs (App Engine descriptors) declare it.
    kind: str = "string"

    def to_descriptor(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "type": self.type,
            "value-key": "[@ID]",
            "command-line-flag": "--@id",
            "optional": self.optional,
        }
        if self.set_by_server:
            data["set-by-server"] = True
        else:
            data["default-value"] = self.default
        if self.uri:
            data.update(
                {
                    "uri": self.uri,
                    "uri-print-attribute": self.uri_print_attribute,
                    "uri-sort-attribute": self.uri_sort_attribute,
                }
            )
        if self.values_choice:
            data["values-choice"] = list(self.values_choice)
        if self.minimum is not None:
            data["minimum"] = self.minimum
        if self.maximum is not None:
            data["maximum"] = self.maximum
        return data


# --------------------------------------------------------------------------- converters


#: What a converter's values are, for front ends that type their inputs (App Engine descriptors):
#: integer, number, boolean, string, ids (a list of Cytomine ids), numbers (a list of numbers).
VALUE_KINDS = ("integer", "number", "boolean", "string", "ids", "numbers")


class _Converter:
    """A named argparse ``type`` (argparse shows ``__name__`` in its messages; ours read well).

    ``kind`` (one of :data:`VALUE_KINDS`) and ``minimum``/``maximum`` say what values it accepts.
    """

    def __init__(
        self,
        expected: str,
        convert: Callable[[str], Any],
        kind: str = "string",
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> None:
        if kind not in VALUE_KINDS:
            raise ValueError(f"unknown value kind {kind!r}")
        self.expected = expected
        self.convert = convert
        self.kind = kind
        self.minimum = minimum
        self.maximum = maximum
        self.__name__ = expected

    def __call__(self, text: str) -> Any:
        try:
            return self.convert(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"{self.expected} (got {text!r})") from None


def integer(minimum: int | None = None, maximum: int | None = None) -> _Converter:
    """Whole numbers in [minimum, maximum]; ``"2.0"`` is accepted (the UI may send it)."""
    bounds = _bounds_text(minimum, maximum)

    def convert(text: str) -> int | None:
        value = float(text)
        if not math.isfinite(value) or value != int(value):
            raise ValueError
        value = int(value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValueError
        return value

    return _Converter(f"a whole number{bounds}", convert, "integer", minimum, maximum)


def number(minimum: float | None = None, maximum: float | None = None) -> _Converter:
    bounds = _bounds_text(minimum, maximum)

    def convert(text: str) -> float:
        value = float(text)
        if (
            not math.isfinite(value)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
        ):
            raise ValueError
        return value

    return _Converter(f"a number{bounds}", convert, "number", minimum, maximum)


def _bounds_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f" of at least {minimum:g}"
    if maximum is not None:
        return f" of at most {maximum:g}"
    return ""


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError


boolean = _Converter("true or false", _boolean, "boolean")


def _id_list(text: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[,_\s]+", text.strip().strip("[]")) if p]
    ids = tuple(int(p) for p in parts)
    if any(i <= 0 for i in ids):
        raise ValueError
    return tuple(dict.fromkeys(ids))


id_list = _Converter("a comma-separated list of ids, e.g. 12,13", _id_list, "ids")


def _number_list(text: str) -> tuple[float, ...]:
    values = tuple(float(p) for p in re.split(r"[,\s]+", text.strip()) if p)
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError
    return values


positive_number_list = _Converter(
    "a comma-separated list of positive numbers, e.g. 0.001,0.0001", _number_list, "numbers"
)


def text(choices: Sequence[str] | None = None) -> _Converter:
    def convert(value: str) -> str:
        value = value.strip()
        if choices is not None and value not in choices:
            raise ValueError
        return value

    return _Converter(f"one of {', '.join(choices)}" if choices else "a text", convert)


# --------------------------------------------------------------------------- the parser


class AppArgumentParser(argparse.ArgumentParser):
    """An argparse parser that raises :class:`ParameterError` (fix first) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ParameterError(_fix_first(message))

    def parse_app_args(self, argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
        """``parse_known_args``: Cytomine leaves the placeholders of empty optional values in the
        command line, and containers prefix it with their own command; such tokens are ignored."""
        return self.parse_known_args(argv)


def _fix_first(message: str) -> str:
    m = re.match(r"argument (\S+?)(?:/\S+)*: (.*)$", message)
    if m:
        name, detail = m.group(1).lstrip("-"), m.group(2)
        choice = re.match(r"invalid choice: (.*) \(choose from (.*)\)$", detail)
        if choice:
            return f"Set {name} to one of {choice.group(2)} (got {choice.group(1)})."
        if detail.startswith("expected one argument"):
            return f"Give {name} a value (the flag --{name} came without one)."
        return f"Set {name} to {detail}."
    m = re.match(r"the following arguments are required: (.*)$", message)
    if m:
        return f"Give {m.group(1)}: required parameters are missing."
    return f"Fix the command line: {message}."


def new_parser(prog: str, description: str, epilog: str | None = None) -> AppArgumentParser:
    return AppArgumentParser(prog=prog, description=description, epilog=epilog, allow_abbrev=False)


_DEFAULT_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "Number": number(),
    "Boolean": boolean,
    "Domain": integer(1),
    "ListDomain": id_list,
    "List": text(),
    "String": text(),
    "Date": text(),
}


def add_input(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    id: str,
    *,
    type: str,
    name: str,
    description: str,
    default: Any = None,
    optional: bool = True,
    set_by_server: bool = False,
    converter: Callable[[str], Any] | None = None,
    uri: str | None = None,
    uri_print_attribute: str | None = None,
    uri_sort_attribute: str | None = None,
    choices: Sequence[str] | None = None,
    aliases: Sequence[str] = (),
    parsed_default: Any = ...,
) -> argparse.Action:
    """Declare descriptor input ``id`` as the option ``--id`` (plus ``aliases``).

    ``default`` is the descriptor's default value (what the Cytomine UI shows); the parsed
    default is that value converted, unless ``parsed_default`` is given. The descriptor's
    ``minimum``/``maximum`` are the converter's bounds (``integer(1, 64)``: stated once).
    """
    if type not in CYTOMINE_TYPES:
        raise ValueError(f"unknown Cytomine type {type!r}")
    convert = converter or (text(choices) if choices else _DEFAULT_CONVERTERS[type])
    if parsed_default is ...:
        parsed_default = (
            convert(_as_text(default)) if default not in (None, "") else (() if type == "ListDomain" else None)
        )
    help_text = description
    if not set_by_server and default not in (None, ""):
        help_text += f" (default: {_as_text(default)})"
    action = parser.add_argument(
        f"--{id}",
        *aliases,
        dest=id,
        type=convert,
        default=parsed_default,
        required=False,
        help=help_text,
        metavar=_metavar(type, choices),
    )
    action.cytomine_input = InputSpec(  # type: ignore[attr-defined]
        id=id,
        type=type,
        name=name,
        description=description,
        default=None if set_by_server else default,
        optional=optional,
        set_by_server=set_by_server,
        uri=uri,
        uri_print_attribute=uri_print_attribute,
        uri_sort_attribute=uri_sort_attribute,
        values_choice=tuple(choices) if choices else None,
        minimum=_plain_number(getattr(convert, "minimum", None)),
        maximum=_plain_number(getattr(convert, "maximum", None)),
        kind=getattr(convert, "kind", "string"),
    )
    return action


def _plain_number(value: float | None) -> float | int | None:
    """A bound as a descriptor writes it: 100, not 100.0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _metavar(type: str, choices: Sequence[str] | None) -> str:
    if choices:
        return "{" + ",".join(choices) + "}"
    return {"Number": "N", "Boolean": "true|false", "ListDomain": "ID,ID", "Domain": "ID"}.get(type, "TEXT")


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option of ``parser`` but ``--help``, in declaration order. argparse keeps them in a
    private list: this is the one place that reads it."""
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def descriptor_inputs(parser: argparse.ArgumentParser) -> list[InputSpec]:
    """The inputs declared with :func:`add_input`, in declaration order."""
    return [a.cytomine_input for a in options(parser) if hasattr(a, "cytomine_input")]  # type: ignore[attr-defined]


def local_option_dests(parser: argparse.ArgumentParser) -> set[str]:
    """Destinations of the options that are not descriptor inputs (local runs and BIAFLOWS)."""
    dests = set()
    for group in parser._action_groups:
        if group.title == LOCAL_GROUP_TITLE:
            dests |= {a.dest for a in group._group_actions}
    return dests


def build_descriptor(
    parser: argparse.ArgumentParser,
    *,
    name: str,
    description: str,
    image: str,
    command: str = "python /app/run.py",
) -> dict[str, Any]:
    """The ``cytomine-0.1`` descriptor of an app whose parser declares its inputs with :func:`add_input`."""
    inputs = descriptor_inputs(parser)
    keys = " ".join(f"[{spec.id.upper()}]" for spec in inputs)
    return {
        "name": name,
        "description": description,
        "schema-version": "cytomine-0.1",
        "container-image": {"image": image, "type": "singularity"},
        "command-line": f"{command} {keys}",
        "inputs": [spec.to_descriptor() for spec in inputs],
    }


def descriptor_values(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The inputs' values as Cytomine stores job parameters (text: ``"12,13"``, ``"true"``), for the
    client's ``CytomineJob``, which records them as job parameters when a person runs the app."""
    values = {}
    for spec in descriptor_inputs(parser):
        value = getattr(args, spec.id, None)
        if isinstance(value, (tuple, list)):
            value = ",".join(str(v) for v in value) if value else None
        elif isinstance(value, bool):
            value = "true" if value else "false"
        values[spec.id] = value
    return argparse.Namespace(**values)
