"""Stage parameter objects: one dataclass per stage, from which the CLI options and the config schema derive.

Each stage module defines one parameter dataclass (e.g. :class:`pixeldino.train.TrainConfig`,
:class:`pixeldino.predict.PredictParams`) holding each field's type, default and, in the Google-style
``Attributes:`` section of its docstring, its documentation. Everything else is derived here, so a default is
written exactly once:

- :func:`add_dataclass_options` turns every field into a ``--field-name`` option of ``pixeldino <verb>``;
- :func:`json_schema` turns the dataclass into the JSON schema of its workflow config section
  (``pixeldino/data/config.schema.yaml`` is generated from it, see :mod:`pixeldino.schema`);
- :func:`from_config` and :func:`from_namespace` build the dataclass from a config section or the parsed options.

Types map as follows: ``int``/``float``/``bool``/``str`` to the JSON types, ``typing.Literal[...]`` to an enum (and
argparse ``choices``), ``X | None`` to a nullable ``X``, ``list[X]`` to an array, ``dict`` to an object. JSON-schema
keywords that annotations cannot express (``minimum``, ``maximum``, ``pattern``...) go into the field's metadata:
``field(default=1, metadata={"minimum": 1})``; the reserved metadata key ``"cli"`` holds argparse keyword overrides.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pixeldino.errors import ConfigError

_ATTRIBUTE = re.compile(r"^\s{8}(\w+): (.*)$")
_CONTINUATION = re.compile(r"^\s{12}(\S.*)$")
#: Metadata keys that are not JSON-schema keywords.
_CLI_KEY = "cli"
_NESTED_KEY = "properties_from"

P = TypeVar("P")


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


def default_of(f: dataclasses.Field[Any]) -> Any:
    """The default value of a dataclass field (a fresh copy for ``default_factory`` fields; None if required)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of a parameter dataclass."""
    return {f.name: default_of(f) for f in dataclasses.fields(cls)}


def _hints(cls: type) -> dict[str, Any]:
    module = __import__(cls.__module__, fromlist=["_"])
    return typing.get_type_hints(cls, vars(module))


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _members(tp: Any) -> tuple[list[Any], bool]:
    """The non-None members of a (possibly optional) type, and whether None is allowed."""
    if _is_union(tp):
        args = list(get_args(tp))
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def _type_schema(tp: Any) -> dict[str, Any]:
    """The JSON schema of one (non-optional) annotation."""
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if origin in (list, tuple) or tp in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return {"type": "array", **({"items": _type_schema(args[0])} if args else {})}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(tp):
        return json_schema(tp)  # type: ignore[arg-type]
    if _is_union(tp):
        return _union_schema(list(get_args(tp)))
    raise TypeError(f"no JSON schema for the annotation {tp!r}")


def _union_schema(args: list[Any]) -> dict[str, Any]:
    nullable = type(None) in args
    parts = [_type_schema(a) for a in args if a is not type(None)]
    if len(parts) == 1:
        schema = parts[0]
        if nullable:
            if "enum" in schema:
                schema = {"enum": [*schema["enum"], None]}
            else:
                schema = {**schema, "type": [schema["type"], "null"]}
        return schema
    if nullable:
        parts.insert(0, {"type": "null"})
    return {"oneOf": parts}


def _merge(schema: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def json_schema(cls: type, *, with_defaults: bool = True) -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of a parameter dataclass: an object with one property per field.

    Args:
        cls: the dataclass.
        with_defaults: write each field's default (False for override mappings such as ``train.augment``, whose
            absent keys mean "the library's value").
    """
    hints = _hints(cls)
    docs = field_docs(cls)
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = {k: v for k, v in f.metadata.items() if k not in (_CLI_KEY, _NESTED_KEY)}
        schema = _type_schema(hints[f.name])
        nested = f.metadata.get(_NESTED_KEY)
        if nested is not None:
            schema = json_schema(nested, with_defaults=False)
        if with_defaults:
            default = default_of(f)
            schema["default"] = as_config(default) if dataclasses.is_dataclass(default) else default
        schema = _merge(schema, meta)
        if docs.get(f.name):
            schema["description"] = docs[f.name]
        properties[f.name] = schema
    return {"type": "object", "additionalProperties": False, "properties": properties}


def from_config(cls: type[P], section: Mapping[str, Any] | None, *, source: str = "config", **overrides: Any) -> P:
    """An instance of ``cls`` from a config section (keys not of ``cls`` are left out; absent ones keep defaults).

    Raises:
        ConfigError: a value the dataclass rejects, as one line.
    """
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: copy.deepcopy(v) for k, v in (section or {}).items() if k in names}
    for name, value in values.items():  # nested parameter objects (e.g. quality.permanent_water)
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, Mapping):
            values[name] = from_config(hints[name], value, source=f"{source}.{name}")
    values.update(overrides)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def as_config(params: Any) -> dict[str, Any]:
    """The config section of a parameter object (the inverse of :func:`from_config`)."""
    out = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        out[f.name] = as_config(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def _json_object(value: str) -> dict[str, Any]:
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON object: {value!r} ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {value!r}")
    return obj


def _scalar_type(tp: Any) -> Any:
    return {int: int, float: float, str: str}.get(tp)


def _option_kwargs(tp: Any) -> dict[str, Any]:
    """argparse keyword arguments for one annotation."""
    members, _ = _members(tp)
    if members == [bool]:
        return {"action": argparse.BooleanOptionalAction}
    literal = [m for m in members if get_origin(m) is Literal]
    if len(members) == 1 and literal:
        return {"choices": list(get_args(literal[0]))}
    lists = [m for m in members if get_origin(m) in (list, tuple)]
    if lists:
        item = [a for a in get_args(lists[0]) if a is not Ellipsis][0]
        item_members, _ = _members(item)
        kwargs: dict[str, Any] = {"nargs": "+" if len(members) > 1 else "*"}
        if get_origin(item_members[0]) is Literal:
            kwargs["choices"] = list(get_args(item_members[0]))
        elif _scalar_type(item_members[0]):
            kwargs["type"] = _scalar_type(item_members[0])
        return kwargs
    if any(get_origin(m) is dict or m is dict for m in members):
        return {"type": _json_object, "metavar": "JSON"}
    if len(members) == 1 and _scalar_type(members[0]):
        return {"type": _scalar_type(members[0])}
    return {}


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: tuple[str, ...] = (),
    include: tuple[str, ...] | None = None,
    prefix: str = "",
    choices: dict[str, tuple[str, ...]] | None = None,
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> list[str]:
    """Add a ``--<prefix><name>`` option for every field of ``cls`` (those in ``include`` if given, none in
    ``exclude``); returns the field names added.

    Options default to ``argparse.SUPPRESS``, so only the ones given appear in the namespace and everything else
    keeps the dataclass default (shown in the help). ``bool`` becomes ``--name/--no-name``, a ``Literal`` a choice,
    ``dict`` a JSON object, a list one or more values. With a ``prefix`` (e.g. ``"merge-"``) the namespace
    attribute is prefixed too, so two dataclasses with a field of the same name can share a parser; read them back
    with :func:`from_namespace` and the same prefix.
    """
    docs = field_docs(cls)
    hints = _hints(cls)
    aliases = aliases or {}
    added = []
    for f in dataclasses.fields(cls):
        if f.name in exclude or (include is not None and f.name not in include):
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = default_of(f)
        shown = json.dumps(default) if isinstance(default, (dict, list)) else default
        kwargs: dict[str, Any] = {
            "dest": _dest(prefix, f.name),
            "default": argparse.SUPPRESS,
            "help": f"{docs.get(f.name, '')} (default: {shown})".replace("%", "%%"),
        }
        kwargs.update(_option_kwargs(hints[f.name]))
        if choices and f.name in choices:
            kwargs["choices"] = list(choices[f.name])
        kwargs.update(f.metadata.get(_CLI_KEY, {}))
        parser.add_argument(flag, *aliases.get(f.name, ()), **kwargs)
        added.append(f.name)
    return added


def _dest(prefix: str, name: str) -> str:
    return (prefix.replace("-", "_") + name) if prefix else name


def from_namespace(cls: type[P], namespace: argparse.Namespace, *, prefix: str = "", **overrides: Any) -> P:
    """An instance of ``cls`` from the fields present in ``namespace`` (the others keep their defaults)."""
    hints = _hints(cls)
    given = vars(namespace)
    values = {
        f.name: given[_dest(prefix, f.name)]
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if _dest(prefix, f.name) in given
    }
    for name, value in list(values.items()):  # "float | list[float]": one number given is the scalar form
        members, _ = _members(hints[name])
        scalar_or_list = len(members) > 1 and any(get_origin(m) in (list, tuple) for m in members)
        if scalar_or_list and isinstance(value, list) and len(value) == 1:
            values[name] = value[0]
    values.update(overrides)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
