"""Span objects from parsed span lines, fast, and exactly as ``Span.model_validate`` makes them.

Validating a stored span with pydantic costs about 15 µs, three to four times as
much as parsing its JSON: the attribute union (``str | bool | int | float |
list[...]``) tries every member of a list value against every element, and
each nested model is one more validation. Almost every stored line was written
by :meth:`Span.model_dump` of a validated span, so its values already have the
exact types validation would produce, and validating it changes nothing.

:func:`decode_span` therefore checks, cheaply and in C where possible, that a
parsed line has exactly that *canonical* shape: the model's fields in order,
each value of the exact type its field holds after validation (``float`` not
``int`` for a time, ``str`` for a ``Literal``), attribute lists of one element
type. Such a line is turned into models directly, reusing the parsed
containers; any other line goes through ``Span.model_validate`` unchanged. The
check only accepts inputs on which validation is the identity, so both paths
give equal objects (equal ``__dict__``, extras and ``model_fields_set``), which
``tests/test_span_read_fast.py`` checks against ``model_validate`` on generated
spans. Measured on LLM-call spans with 2.3 KB of attributes: 13-15 µs per span
validated, about 6 µs checked and built here (parsing is another 3-4 µs); a line
that fails the check costs the check plus the validation.

The shortcut hard-codes the span models' layout. :data:`FAST_PATH` is only true
when the models still have exactly that layout (fields, types, defaults,
config, no validators); if someone changes them, every line is validated and
the test that asserts :data:`FAST_PATH` fails until this module is updated.
"""

from __future__ import annotations

import itertools
from typing import Any, Final, Literal

from pydantic import BaseModel

from store_fs.models import Event, Link, OtelResource, Span, SpanContext, TraceStatus

# The canonical line layout (SPAN_KEYS ... RESOURCE_KEYS) is public for other fast readers of
# span lines (store_fs/datasets/_span_rows.py): one definition of what "canonical" means.
__all__ = [
    "CONTEXT_KEYS",
    "CONTEXT_TYPES",
    "FAST_PATH",
    "N_SPAN_KEYS",
    "RESOURCE_KEYS",
    "SCALARS",
    "SCALARS_OR_LIST",
    "SPAN_KEYS",
    "SPAN_TYPES",
    "STATUS_CODES",
    "STATUS_KEYS",
    "attributes_kept",
    "copy_span",
    "decode_span",
]

_NONE: Final = type(None)
SCALARS: Final = frozenset({str, int, float, bool})
SCALARS_OR_LIST: Final = frozenset({str, int, float, bool, list})
_STR_ONLY: Final = frozenset({str})
STATUS_CODES: Final = frozenset({"UNSET", "OK", "ERROR"})

SPAN_KEYS: Final = (
    "rollout_id",
    "attempt_id",
    "sequence_id",
    "trace_id",
    "span_id",
    "parent_id",
    "name",
    "status",
    "attributes",
    "events",
    "links",
    "start_time",
    "end_time",
    "context",
    "parent",
    "resource",
)
N_SPAN_KEYS: Final = len(SPAN_KEYS)
# The exact value types of a canonical span line, field by field (optional fields: both).
SPAN_TYPES: Final = frozenset(
    (str, str, int, str, str, parent_id, str, dict, dict, list, list, start, end, context, parent, dict)
    for parent_id, start, end, context, parent in itertools.product(
        (str, _NONE), (float, _NONE), (float, _NONE), (dict, _NONE), (dict, _NONE)
    )
)
STATUS_KEYS: Final = ("status_code", "description")
CONTEXT_KEYS: Final = ("trace_id", "span_id", "is_remote", "trace_state")
CONTEXT_TYPES: Final = (str, str, bool, dict)
RESOURCE_KEYS: Final = ("attributes", "schema_url")
_EVENT_KEYS: Final = ("name", "attributes", "timestamp")
_LINK_KEYS: Final = ("context", "attributes")

# Models are built the way pydantic's ``model_construct`` builds them (a new
# instance, then its four slots), minus its per-field Python loop.
_new = object.__new__
_slots = BaseModel.__dict__
_set_dict: Final = _slots["__dict__"].__set__
_set_fields_set: Final = _slots["__pydantic_fields_set__"].__set__
_set_extra: Final = _slots["__pydantic_extra__"].__set__
_set_private: Final = _slots["__pydantic_private__"].__set__


def _make(cls: type[Any], values: dict[str, Any], fields_set: set[str], extra: dict[str, Any] | None) -> Any:
    model = _new(cls)
    _set_dict(model, values)
    _set_fields_set(model, fields_set)
    _set_extra(model, extra)
    _set_private(model, None)
    return model


# -- the layout the shortcut was written for -------------------------------------------
_AttributeValue = str | bool | int | float | list[str] | list[bool] | list[int] | list[float]
_Attributes = dict[str, _AttributeValue]
_REQUIRED: Final = object()
# ``from_attributes`` (every model's, from AglModel) only matters when validating an object that
# is not a dict; the shortcut only ever sees parsed JSON.
_EXPECTED_LAYOUT: Final[dict[type[BaseModel], tuple[dict[str, Any], dict[str, tuple[Any, Any]]]]] = {
    Span: (
        {"from_attributes": True, "extra": "allow"},
        {
            "rollout_id": (str, _REQUIRED),
            "attempt_id": (str, _REQUIRED),
            "sequence_id": (int, _REQUIRED),
            "trace_id": (str, _REQUIRED),
            "span_id": (str, _REQUIRED),
            "parent_id": (str | None, _REQUIRED),
            "name": (str, _REQUIRED),
            "status": (TraceStatus, _REQUIRED),
            "attributes": (_Attributes, _REQUIRED),
            "events": (list[Event], _REQUIRED),
            "links": (list[Link], _REQUIRED),
            "start_time": (float | None, _REQUIRED),
            "end_time": (float | None, _REQUIRED),
            "context": (SpanContext | None, _REQUIRED),
            "parent": (SpanContext | None, _REQUIRED),
            "resource": (OtelResource, _REQUIRED),
        },
    ),
    TraceStatus: (
        {"from_attributes": True, "extra": "allow"},
        {"status_code": (Literal["UNSET", "OK", "ERROR"], _REQUIRED), "description": (str | None, None)},
    ),
    SpanContext: (
        {"from_attributes": True, "extra": "allow"},
        {
            "trace_id": (str, _REQUIRED),
            "span_id": (str, _REQUIRED),
            "is_remote": (bool, _REQUIRED),
            "trace_state": (dict[str, str], _REQUIRED),
        },
    ),
    Event: (
        {"from_attributes": True, "extra": "allow"},
        {"name": (str, _REQUIRED), "attributes": (_Attributes, _REQUIRED), "timestamp": (float | None, None)},
    ),
    Link: (
        {"from_attributes": True, "extra": "allow"},
        {"context": (SpanContext, _REQUIRED), "attributes": (_Attributes | None, None)},
    ),
    OtelResource: (
        {"from_attributes": True},
        {"attributes": (_Attributes, _REQUIRED), "schema_url": (str, _REQUIRED)},
    ),
}


def _layout_matches(
    model: type[BaseModel], config: dict[str, Any], fields: dict[str, tuple[Any, Any]]
) -> bool:
    decorators = model.__pydantic_decorators__
    # defer_build says when the validator is built, not what it accepts.
    settings = {k: v for k, v in model.model_config.items() if k != "defer_build"}
    if (
        settings != config
        or model.__private_attributes__
        or model.__pydantic_post_init__ is not None
        or model.__pydantic_custom_init__
        or decorators.validators
        or decorators.field_validators
        or decorators.root_validators
        or decorators.model_validators
        or list(model.model_fields) != list(fields)
    ):
        return False
    for name, info in model.model_fields.items():
        annotation, default = fields[name]
        if info.annotation != annotation or info.metadata or info.validation_alias or info.alias:
            return False
        if info.default_factory is not None:
            return False
        if (default is _REQUIRED) != info.is_required() or (
            default is not _REQUIRED and info.default != default
        ):
            return False
    return True


FAST_PATH: Final = all(_layout_matches(m, c, f) for m, (c, f) in _EXPECTED_LAYOUT.items())
"""True when the span models have the layout :func:`decode_span`'s shortcut was written for."""


# -- canonical checks: each returns the model, or None when the value is not canonical ------
def attributes_kept(attributes: dict[str, Any]) -> bool:
    """Whether the smart union of ``Attributes`` would keep every value as it is.

    Scalars of the four exact types are kept. A list is kept only when all its
    elements have one of those types (validation turns ``[1, 2.5]`` into
    ``[1.0, 2.5]`` and ``[True, 1]`` into ``[True, True]``); an empty list is kept
    whatever member matches it.
    """
    kinds = set(map(type, attributes.values()))
    if kinds <= SCALARS:
        return True
    if not kinds <= SCALARS_OR_LIST:
        return False
    for value in attributes.values():
        if type(value) is list and value:
            elements = set(map(type, value))
            if len(elements) != 1 or not elements <= SCALARS:
                return False
    return True


def _status(value: dict[str, Any]) -> TraceStatus | None:
    keys = tuple(value)
    code = value.get("status_code")
    if type(code) is not str or code not in STATUS_CODES:
        return None
    if keys == STATUS_KEYS:
        description = value["description"]
        if description is None or type(description) is str:
            status: TraceStatus = _make(TraceStatus, value, {"status_code", "description"}, {})
            return status
    elif keys == ("status_code",):
        status = _make(TraceStatus, {"status_code": code, "description": None}, {"status_code"}, {})
        return status
    return None


def _context(value: Any) -> SpanContext | None:
    if type(value) is not dict or tuple(value) != CONTEXT_KEYS:
        return None
    if tuple(map(type, value.values())) != CONTEXT_TYPES:
        return None
    trace_state = value["trace_state"]
    if trace_state and set(map(type, trace_state.values())) != _STR_ONLY:
        return None
    context: SpanContext = _make(SpanContext, value, {"trace_id", "span_id", "is_remote", "trace_state"}, {})
    return context


def _resource(value: dict[str, Any]) -> OtelResource | None:
    if tuple(value) != RESOURCE_KEYS or type(value["schema_url"]) is not str:
        return None
    attributes = value["attributes"]
    if type(attributes) is not dict or not attributes_kept(attributes):
        return None
    resource: OtelResource = _make(OtelResource, value, {"attributes", "schema_url"}, None)
    return resource


def _event(value: Any) -> Event | None:
    if type(value) is not dict:
        return None
    keys = tuple(value)
    if keys == _EVENT_KEYS:
        timestamp = value["timestamp"]
        if timestamp is not None and type(timestamp) is not float:
            return None
        values = value
    elif keys == _EVENT_KEYS[:2]:
        values = {**value, "timestamp": None}
    else:
        return None
    attributes = value["attributes"]
    if type(value["name"]) is not str or type(attributes) is not dict or not attributes_kept(attributes):
        return None
    event: Event = _make(Event, values, set(keys), {})
    return event


def _link(value: Any) -> Link | None:
    if type(value) is not dict:
        return None
    keys = tuple(value)
    if keys == _LINK_KEYS:
        attributes = value["attributes"]
        if attributes is not None and (type(attributes) is not dict or not attributes_kept(attributes)):
            return None
    elif keys != _LINK_KEYS[:1]:
        return None
    context = _context(value["context"])
    if context is None:
        return None
    link: Link = _make(Link, {"context": context, "attributes": value.get("attributes")}, set(keys), {})
    return link


def _models(values: list[Any], build: Any) -> list[Any] | None:
    out = []
    for value in values:
        model = build(value)
        if model is None:
            return None
        out.append(model)
    return out


def _fast_span(obj: dict[str, Any]) -> Span | None:
    """The span of a canonical line (taking over ``obj``), or None, leaving ``obj`` untouched."""
    keys = tuple(obj)
    extra_keys = keys[N_SPAN_KEYS:]
    if keys[:N_SPAN_KEYS] != SPAN_KEYS:
        return None
    types = tuple(map(type, obj.values()))
    if (types[:N_SPAN_KEYS] if extra_keys else types) not in SPAN_TYPES:
        return None
    status = _status(obj["status"])
    resource = _resource(obj["resource"])
    if status is None or resource is None or not attributes_kept(obj["attributes"]):
        return None
    context = parent = None
    if obj["context"] is not None and (context := _context(obj["context"])) is None:
        return None
    if obj["parent"] is not None and (parent := _context(obj["parent"])) is None:
        return None
    events = obj["events"]
    if events and (events := _models(events, _event)) is None:
        return None
    links = obj["links"]
    if links and (links := _models(links, _link)) is None:
        return None
    # Canonical: only now take ``obj`` over as the span's field dict.
    extra = {key: obj.pop(key) for key in extra_keys} if extra_keys else {}
    fields_set = set(keys)  # every field is present; pydantic counts extras as set fields too
    obj["status"] = status
    obj["events"] = events
    obj["links"] = links
    obj["context"] = context
    obj["parent"] = parent
    obj["resource"] = resource
    span: Span = _make(Span, obj, fields_set, extra)
    return span


def decode_span(obj: dict[str, Any]) -> Span:
    """``Span.model_validate(obj)``, fast when ``obj`` has the canonical shape.

    ``obj`` must be a freshly parsed JSON object that the caller hands over: the
    returned span may use its containers as its own. Raises pydantic's
    ``ValidationError`` exactly when ``Span.model_validate`` does.
    """
    if FAST_PATH:
        span = _fast_span(obj)
        if span is not None:
            return span
    return Span.model_validate(obj)


def copy_span(span: Span) -> Span:
    """A copy a caller may change: its own field dict and ``attributes``, nested values shared.

    ``span.model_copy()`` copies the field dict alone in ~1.7 µs; this takes ~0.5 µs.
    """
    if not FAST_PATH:
        copied = span.model_copy()
        copied.attributes = dict(span.attributes)
        return copied
    fields = dict(span.__dict__)
    fields["attributes"] = dict(fields["attributes"])
    extra = span.__pydantic_extra__
    made: Span = _make(
        Span, fields, set(span.__pydantic_fields_set__), None if extra is None else dict(extra)
    )
    return made
