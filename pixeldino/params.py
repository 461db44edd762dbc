"""Command-line options derived from a parameter dataclass, so that a default is written only once.

The dataclass (e.g. :class:`pixeldino.train.TrainConfig`) holds each field's type, default and (in its Google-style
``Attributes:`` docstring section) its documentation; :func:`add_dataclass_options` turns every field into a
``--field-name`` option whose absence leaves the dataclass default in force.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from typing import Any

_ATTRIBUTE = re.compile(r"^\s{8}(\w+): (.*)$")
_CONTINUATION = re.compile(r"^\s{12}(\S.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """``{field: one-paragraph description}`` from the ``Attributes:`` section of the class docstring."""
    docs: dict[str, str] = {}
    current = None
    in_attributes = False
    for line in (cls.__doc__ or "").splitlines():
        if line.strip() == "Attributes:":
            in_attributes = True
            continue
        if not in_attributes:
            continue
        m = _ATTRIBUTE.match(line)
        if m:
            current = m.group(1)
            docs[current] = m.group(2).strip()
            continue
        c = _CONTINUATION.match(line)
        if c and current:
            docs[current] += " " + c.group(1).strip()
        elif line.strip():
            current = None
    return docs


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _json_object(value: str) -> dict[str, Any]:
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON object: {value!r} ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {value!r}")
    return obj


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: tuple[str, ...] = (),
    choices: dict[str, tuple[str, ...]] | None = None,
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> list[str]:
    """Add a ``--name`` option for every field of ``cls`` not in ``exclude``; returns the field names added.

    Options default to ``argparse.SUPPRESS``, so only the ones given appear in the namespace and everything else
    keeps the dataclass default (shown in the help). Types come from the annotations: ``bool`` becomes
    ``--name/--no-name``, ``dict`` a JSON object, ``float | list[float]`` one or more numbers.
    """
    docs = field_docs(cls)
    choices = choices or {}
    aliases = aliases or {}
    added = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = _default_of(f)
        shown = json.dumps(default) if isinstance(default, (dict, list)) else default
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": f"{docs.get(f.name, '')} (default: {shown})".replace("%", "%%")}
        annotation = str(f.type).replace(" ", "")
        if annotation == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif annotation.startswith("dict"):
            kwargs["type"] = _json_object
            kwargs["metavar"] = "JSON"
        elif "list[float]" in annotation:
            kwargs["type"] = float
            kwargs["nargs"] = "+"
        elif annotation.startswith("int"):
            kwargs["type"] = int
        elif annotation.startswith("float"):
            kwargs["type"] = float
        if f.name in choices:
            kwargs["choices"] = list(choices[f.name])
        parser.add_argument(flag, *aliases.get(f.name, ()), **kwargs)
        added.append(f.name)
    return added


def from_namespace(cls: type, namespace: argparse.Namespace, **overrides: Any) -> Any:
    """An instance of ``cls`` from the fields present in ``namespace`` (the others keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    for f in dataclasses.fields(cls):  # "float | list[float]": one number given is the scalar form
        scalar_or_list = str(f.type).replace(" ", "").startswith("float|list")
        if scalar_or_list and isinstance(values.get(f.name), list) and len(values[f.name]) == 1:
            values[f.name] = values[f.name][0]
    values.update(overrides)
    return cls(**values)
