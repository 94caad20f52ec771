"""Python types from the JSON schema, so that each config key's type is written once (in the schema).

Scalars map one to one (integer → int, number → float, boolean → bool, string → str, enums by their type); an array
is a list of its items' type, also when the schema fixes its length (the library and the files it writes use lists,
and the schema already refuses a wrong length); a ``null`` type or branch makes the type optional; every object with
properties becomes a frozen dataclass without defaults (those stay in the schema, filled in by validation).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

SCALARS: dict[str, Any] = {"integer": int, "number": float, "boolean": bool, "string": str, "null": type(None)}


def camel_case(key: str) -> str:
    return "".join(word.capitalize() for word in key.split("_"))


def python_type(node: Mapping, path: str, section: Callable[[Mapping, str], type]) -> Any:
    """The type of the values a schema node admits; ``section(node, path)`` gives the dataclass of an object node."""
    branches = node.get("oneOf", node.get("anyOf"))
    if branches is not None:
        return _union(python_type(branch, path, section) for branch in branches)
    if "type" not in node:
        raise TypeError(f"config schema: {path or '(top level)'} has no type, so it cannot be typed")
    declared = node["type"] if isinstance(node["type"], list) else [node["type"]]
    return _union(_single(name, node, path, section) for name in declared)


def _single(name: str, node: Mapping, path: str, section: Callable[[Mapping, str], type]) -> Any:
    if name == "object":
        # a mapping of free keys (detectors: {name: ...}) stays a dict; its entries are typed where they are used
        return section(node, path) if "properties" in node else dict
    if name == "array":
        return list[python_type(node["items"], f"{path}[]", section)]
    return SCALARS[name]


def _union(types: Iterable[Any]) -> Any:
    return functools.reduce(operator.or_, types)


def sections_from_schema(
    schema: Mapping, class_name: Callable[[str], str], methods: Mapping[str, type], module: str
) -> dict[str, type]:
    """{class name: frozen dataclass} for every mapping of the schema, named by ``class_name(dotted path)``.

    Mappings given the same name share one class, which must then have the same fields and types (both noise
    sections, say); ``methods[name]``, where present, is the base class that carries the section's methods.
    """
    made: dict[str, type] = {}

    def section(node: Mapping, path: str) -> type:
        name = class_name(path)
        fields = [
            (key, python_type(sub, f"{path}.{key}".lstrip("."), section)) for key, sub in node["properties"].items()
        ]
        if name in made:
            if [(f.name, f.type) for f in dataclasses.fields(made[name])] != fields:
                raise TypeError(
                    f"config schema: {path} is typed as {name} but its keys or types differ from the others"
                )
            return made[name]
        made[name] = dataclasses.make_dataclass(
            name,
            fields,
            bases=(methods[name],) if name in methods else (),
            # pickling and repr look the class up by module and name, where the caller publishes it
            namespace={"__module__": module, "__qualname__": name, "__doc__": (node.get("description") or "").strip()},
            frozen=True,
        )
        return made[name]

    section(schema, "")
    return made
