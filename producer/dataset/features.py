"""The records' column types, declared in the card so that ``datasets`` never guesses them per file.

``datasets`` infers a JSON shard's Arrow schema file by file and then needs every file of a
config to agree. A run's shards need not: a field that is null in every record of one shard and
text in another (``duplicate_of``, ``detail``), ``scores`` that are ``{}`` in one shard and
``{"relevance": 0.9}`` in the next, a ``params`` value written as ``1`` here and ``0.8`` there.
So the card declares the types (``dataset_info.features``, the Hub's YAML form), found over
*all* records of a config: null joins anything, an integer and a float make a float, objects
are structs of the union of their keys, lists hold the join of their items. ``messages`` stays
a list of ``{role, content}`` strings, as chat templates take it.

Measured with datasets 5.2: without the declaration, a rejected config whose first shard has
``duplicate_of`` null everywhere and whose second has a text one fails to load ("Couldn't cast
array of type string to null"); with it, both configs load, zstd shards included.
"""

from __future__ import annotations

from typing import Any

# a type: "null" | "bool" | "int64" | "float64" | "string" | ("struct", {name: type}) | ("list", type)
Type = Any
_SCALARS = {bool: "bool", int: "int64", float: "float64", str: "string"}


def type_of(value: Any) -> Type:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return ("struct", {str(k): type_of(v) for k, v in value.items()})
    if isinstance(value, list):
        item: Type = "null"
        for element in value:
            item = join(item, type_of(element))
        return ("list", item)
    return _SCALARS.get(type(value), "string")


def join(a: Type, b: Type) -> Type:
    """The narrowest type that holds values of both (``string`` when they have nothing in common)."""
    if a == "null" or a == b:
        return b
    if b == "null":
        return a
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0]:
        if a[0] == "list":
            return ("list", join(a[1], b[1]))
        fields = dict(a[1])
        for name, kind in b[1].items():
            fields[name] = join(fields.get(name, "null"), kind)
        return ("struct", fields)
    if {a, b} == {"int64", "float64"}:
        return "float64"
    return "string"


_MODEL: Type = ("struct", {"name": "string", "file": "string", "sha256": "string", "size": "int64"})
# fields of ConversationRecord (convfarm/messages.py) whose type the records may not show: null in
# every record of a config (an accepted record has no reason), or empty (no judge ran). Declared
# anyway, so that every run's configs have the same columns whatever their records hold.
KNOWN: dict[str, Type] = {
    "reason": "string", "detail": "string", "duplicate_of": "string", "rules_version": "string",
    "scores": ("struct", {"relevance": "float64"}),
    "judge": ("struct", {"model": _MODEL, "method": "string", "version": "int64"}),
}


class Schema:
    """The join of every record's type (and of :data:`KNOWN`), in first-seen field order."""

    def __init__(self) -> None:
        self.type: Type = ("struct", {})

    def yaml_features(self) -> list[dict[str, Any]]:
        """``dataset_info.features`` as the Hub's README YAML writes it (``datasets.Features._to_yaml_list``)."""
        if not self.type[1]:
            return []  # no record: nothing to declare (the config is not listed)
        fields = dict(self.type[1])
        for name, kind in KNOWN.items():
            if name in fields:  # a field the records lack is not declared: its column would not exist
                fields[name] = join(kind, fields[name])
        return _fields(fields)

    def add(self, record: dict[str, Any]) -> None:
        self.type = join(self.type, type_of(record))


def _dtype(kind: Type) -> dict[str, Any]:
    if isinstance(kind, str):
        return {"dtype": kind}
    if kind[0] == "struct":
        # an object that was always empty ({} in every record): Arrow has no struct without fields,
        # so it is declared as a struct of one null field that no record has
        return {"struct": _fields(kind[1]) or [{"name": "_", "dtype": "null"}]}
    item = kind[1]
    if isinstance(item, tuple) and item[0] == "struct":
        return {"list": _fields(item[1]) or [{"name": "_", "dtype": "null"}]}
    inner = _dtype(item)
    return {"list": inner["dtype"]} if "dtype" in inner else {"list": inner}


def _fields(fields: dict[str, Type]) -> list[dict[str, Any]]:
    return [{"name": name, **_dtype(kind)} for name, kind in fields.items()]
