"""One codec for every record: attrs classes to plain dicts and back, strictly.

A record travels as a plain dict (never its own pickled class, so renaming a
class cannot turn an old blob into an ``AttributeError`` half-way through
loading) tagged with its format. The dict is what cattrs makes of the attrs
class, field by field, with two rules of ours on top:

- **strict scalars.** A blob is untrusted until it decodes: a ``str`` field
  never becomes ``"5"`` from ``5``, a ``bool`` is never an ``int``, a
  ``float`` takes an ``int`` (JSON has one number type) and nothing else.
  Any mismatch fails closed: :class:`~icechunk_coop.errors.PayloadFormatError`
  names the blob and each field that is wrong.
- **fields added later are optional keys.** Such a field (``OPTIONAL``)
  is left out at its default, so a record gains it without a new format
  version; every other key is written as earlier releases wrote it.

Icechunk's sessions and the user's own objects (fields typed ``Any``: worker
0's decision, a worker's value) travel as they are, for the frame to pickle;
the codec only checks that sessions are sessions. It imports icechunk only
when a record holding one is encoded or decoded, so naming and reading the
JSON markers (``status``) stays light.
"""

from __future__ import annotations

import functools
import threading
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union
from cattrs.v import format_exception

from icechunk_coop.errors import PayloadFormatError

__all__ = ["OPTIONAL", "Timelines", "decode", "encode", "prepare", "tagged_union"]

#: Tuples travel as lists (what JSON makes of them anyway, and what earlier
#: releases pickled).
_converter = cattrs.Converter(unstruct_collection_overrides={tuple: list})

#: Field metadata (``attrs.field(default=None, metadata=OPTIONAL)``): a key
#: left out of the wire at its default. For a field added to a record after
#: its format shipped: an older reader never sees the key, a newer one reads
#: its absence as the default, and the format needs no new version.
OPTIONAL: Mapping[str, bool] = {"icechunk_coop.optional": True}


def _strict(
    kind: type | tuple[type, ...], name: str, convert: Callable[[Any], Any] = lambda v: v
) -> Callable[[object, object], Any]:
    def hook(value: object, _: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"{type(value).__name__} is not {name}")
        return convert(value)

    return hook


# A field typed ``Any`` (worker 0's decision, a worker's value) is the user's own
# object: it travels as it is, never taken apart (the frame pickles it whole).
_converter.register_unstructure_hook_func(lambda t: t is Any, lambda value: value)
_converter.register_structure_hook_func(lambda t: t is Any, lambda value, _: value)
_converter.register_structure_hook(str, _strict(str, "str"))
_converter.register_structure_hook(int, _strict(int, "int"))
_converter.register_structure_hook(float, _strict((int, float), "float", float))
_converter.register_structure_hook(bytes, _strict(bytes, "bytes"))


#: Unions waiting for their members' annotations to resolve (see ``_resolved``).
_UNIONS: dict[Any, tuple[Mapping[type, str], str]] = {}


def tagged_union(union: Any, tags: Mapping[type, str], *, key: str = "kind") -> None:
    """Encode the members of ``union`` with ``key`` naming which one (``tags``).

    Configured once every member's annotations resolve (cattrs reads them
    at once), so that a member naming icechunk costs the import only when
    a record holding it is encoded or decoded.
    """
    _UNIONS[union] = (dict(tags), key)


#: Worker index -> step -> (began, ended): JSON keys are text, so indexes travel as digits.
Timelines = Mapping[int, Mapping[str, tuple[float, float]]]


def _timelines_to_wire(value: Timelines) -> dict[str, Any]:
    return {str(i): {k: list(v) for k, v in steps.items()} for i, steps in value.items()}


def _timelines_from_wire(value: object, _: object) -> dict[int, Any]:
    if not isinstance(value, Mapping) or not all(str(k).isdigit() for k in value):
        raise ValueError("a timeline must map worker indexes to steps")
    steps = Mapping[str, tuple[float, float]]
    return {int(k): _converter.structure(v, steps) for k, v in value.items()}  # type: ignore[type-abstract]


_converter.register_unstructure_hook_func(lambda t: t == Timelines, _timelines_to_wire)
_converter.register_structure_hook_func(lambda t: t == Timelines, _timelines_from_wire)


_RESOLVED: set[type] = set()
_RESOLVING = threading.RLock()  # finalizers decode results in several threads at once


def _resolved(cls: type) -> None:
    """Resolve ``cls``'s annotations (and its nested records'), importing icechunk if named."""
    with _RESOLVING:
        if cls not in _RESOLVED:
            _RESOLVED.add(cls)
            _resolve(cls)


@functools.cache
def _icechunk() -> dict[str, Any]:
    """icechunk, imported and its sessions' hooks registered, the first time a record names it."""
    import icechunk

    session = icechunk.ForkSession
    _converter.register_structure_hook(session, _strict(session, "an Icechunk fork session"))
    _converter.register_unstructure_hook(session, lambda fork: fork)
    return {"icechunk": icechunk}


def _resolve(cls: type) -> None:
    try:
        attrs.resolve_types(cls)
    except NameError:  # only records that hold sessions name icechunk
        attrs.resolve_types(cls, localns=_icechunk())
    for f in attrs.fields(cls):
        for member in _members(f.type):
            _resolved(member)
    for union, (tags, key) in list(_UNIONS.items()):
        if all(member in _RESOLVED for member in tags):
            del _UNIONS[union]
            configure_tagged_union(union, _converter, tag_name=key, tag_generator=tags.__getitem__)
    omitted: dict[str, Any] = {f.name: override(omit_if_default=True) for f in attrs.fields(cls)
                               if f.metadata == OPTIONAL}  # fmt: skip
    tag: str | None = getattr(cls, "FORMAT", None)
    if tag is None and not omitted:
        return
    fields_of: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(
        cls, _converter, **omitted
    )
    from_fields: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, _converter)
    if tag is None:
        _converter.register_unstructure_hook(cls, fields_of)
        return

    def tagged(record: Any) -> dict[str, Any]:
        return {"format": tag, **fields_of(record)}

    def checked(wire: Any, _: type) -> Any:
        _check_format(wire, tag)
        return from_fields(wire, cls)

    _converter.register_unstructure_hook(cls, tagged)
    _converter.register_structure_hook(cls, checked)


def _check_format(wire: object, tag: str) -> None:
    if not isinstance(wire, Mapping):
        raise TypeError(f"it holds {type(wire).__name__}, not a {tag} record")
    if wire.get("format") != tag:
        raise ValueError(
            f"its format is {wire.get('format')!r}, not {tag!r}: every worker of a job must "
            "run the same icechunk-coop version"
        )


def _members(annotation: object) -> list[type]:
    """The attrs classes an annotation names, however deep."""
    if attrs.has(annotation):  # type: ignore[arg-type]
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _members(arg)]


def _describe(exc: BaseException, kind: Any) -> str:
    """What was wrong with one field: our hooks' own words where they have some."""
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    if isinstance(exc, KeyError) and exc.args:  # a field, or a union's kind, not there
        return f"{exc.args[0]!r} is missing or unknown"
    return format_exception(exc, kind)


def prepare(*classes: type) -> None:
    """Build the hooks of ``classes`` (and of the records they hold) now, not at first use.

    cattrs writes each record's hooks the first time it is encoded or
    decoded: tens of milliseconds of CPU for a job's records, which a worker
    would otherwise spend on its critical path (publishing its result,
    opening the setup). A job prepares them while it is being built.
    """
    for cls in classes:
        _resolved(cls)


def encode(record: attrs.AttrsInstance) -> dict[str, Any]:
    """``record`` as a plain dict, tagged ``format`` when its class has a ``FORMAT``."""
    _resolved(type(record))
    wire: dict[str, Any] = _converter.unstructure(record)
    return wire


def decode[T](wire: object, cls: type[T], location: str) -> T:
    """The ``cls`` that ``wire`` holds, or a refusal naming ``location`` and each bad field.

    A record whose class has a ``FORMAT`` must carry exactly that tag, nested
    ones too: every worker of a job runs the same release, and a blob of
    another format is refused before any of its fields is read.
    """
    _resolved(cls)
    try:
        return _converter.structure(wire, cls)
    except cattrs.BaseValidationError as exc:
        problems = "; ".join(cattrs.transform_error(exc, "record", _describe))
        reason = f"not a valid record: {problems}"
        raise PayloadFormatError(location=location, reason=reason) from exc
    except (TypeError, ValueError) as exc:  # the record's own format tag (``_check_format``)
        raise PayloadFormatError(location=location, reason=str(exc)) from exc
