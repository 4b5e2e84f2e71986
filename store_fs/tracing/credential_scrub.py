"""Credentials never reach a stored span: API keys, ``Authorization`` / ``api-key`` headers.

The OpenAI instrumentation records no headers at all, but other instrumentations do (AgentOps
0.4.21 records ``gen_ai.request.headers`` = ``str(extra_headers)``), an error message may quote
a key, and an agent may put anything in an attribute. So every span a rollout binding stores
passes :func:`scrub_span`, which

* drops attributes whose name says they hold credentials or headers (:func:`is_secret_key`);
* masks, in every string attribute and event attribute, the secrets seen so far in this
  process (:func:`remember_client_secrets` registers a client's API key and credential
  headers, at each instrumented call), ``Bearer`` tokens and OpenAI-style ``sk-…`` keys.

Masked text reads ``[REDACTED]``. Masking must not rewrite ordinary text, or a prompt stored
for training no longer says what was sent: so a secret is masked only when it looks like one
(:func:`_token_like`: a digit, an underscore or a capital after the first letter), which
``sk-learn-compatible-estimators`` and the ``instrument`` of "a bearer instrument" do not; a
registered secret also when it has 16 characters or more, and never below 8 (a local
server's ``api_key="EMPTY"`` or ``"anything"`` must not blank those words out of prompts).
The registry lives in memory only and keeps the 64 most recent secrets.

The same pass mends text JSON cannot hold: a lone UTF-16 surrogate (an LLM's reply cut inside
an emoji, bytes decoded with ``surrogateescape``) becomes U+FFFD and a pair of surrogates the
character it encodes. The store refuses such a string by name (``UnstorableValueError``), which
failed the whole attempt over one character of recorded text.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from store_fs.models import Span

__all__ = ["MASK", "is_secret_key", "remember_client_secrets", "remember_secret", "scrub_span", "scrub_text"]

MASK = "[REDACTED]"
_MIN_SECRET = 8
_LONG_SECRET = 16  # registered secrets this long are masked even when they look like words
_MAX_SECRETS = 64
_BEARER = re.compile(r"(?i)(\bbearer\s+)([A-Za-z0-9._~+/=-]{8,})")
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")
_TOKEN_MARK = re.compile(r"[0-9_]|.[A-Z]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _token_like(text: str) -> bool:
    """A digit, an underscore or a capital after the first character: generated keys and
    tokens have one (all but a vanishing share of random 48-character keys), the words of
    prose (with their dots, slashes and hyphens) do not."""
    return _TOKEN_MARK.search(text) is not None


_SECRET_NAMES = frozenset(
    {"headers", "cookie", "set-cookie", "password", "passwd", "access_token", "refresh_token", "id_token"}
)
_SECRET_PARTS = ("authorization", "api_key", "api-key", "apikey", "secret", "credential")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # replaced, never mutated: readers need no lock


@functools.lru_cache(maxsize=4096)  # attribute names repeat from span to span
def is_secret_key(name: str) -> bool:
    """An attribute or header name that stands for credentials (its last dotted segment)."""
    last = name.rsplit(".", 1)[-1].lower()
    return last in _SECRET_NAMES or any(part in last for part in _SECRET_PARTS)


def remember_secret(value: Any) -> None:
    """Mask ``value`` (and, for ``Bearer x``, ``x``) in every span stored from now on."""
    global _secrets
    if not isinstance(value, str):
        return
    found = [value, value.split(" ", 1)[1] if value.lower().startswith("bearer ") else ""]
    fresh = [
        v
        for v in found
        if len(v) >= _MIN_SECRET and (len(v) >= _LONG_SECRET or _token_like(v)) and v not in _secrets
    ]
    if not fresh:
        return
    with _lock:
        kept = [s for s in _secrets if s not in fresh]
        # Longest first, so a key is masked whole before any secret it contains.
        _secrets = tuple(sorted([*fresh, *kept][:_MAX_SECRETS], key=len, reverse=True))


def remember_client_secrets(client: Any, headers: Mapping[str, Any] | None = None) -> None:
    """Register an ``openai`` client's API key, and the values of its credential headers
    (``default_headers``, and ``headers`` of the call: ``extra_headers``)."""
    remember_secret(getattr(client, "api_key", None))
    custom = getattr(client, "_custom_headers", None)
    for source in (custom if isinstance(custom, Mapping) else None, headers):
        for name, value in (source or {}).items():
            if isinstance(name, str) and (is_secret_key(name) or "token" in name.lower()):
                remember_secret(value)


def scrub_text(text: str) -> str:
    """``text`` with every known secret and secret-looking token masked, and lone surrogates
    mended (module doc)."""
    if not text.isascii() and _SURROGATE.search(text) is not None:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    # Substring tests first: the regular expressions would cost far more on long prompts.
    if "sk-" in text:
        text = _OPENAI_KEY.sub(lambda m: MASK if _token_like(m.group(0)[3:]) else m.group(0), text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(_masked_bearer, text)
    return text


def _masked_bearer(match: re.Match[str]) -> str:
    token = match.group(2)
    core = token.rstrip("./=+~")  # a sentence's full stop, a path's slash: not the token's own
    if not _token_like(core):
        return match.group(0)
    return match.group(1) + MASK + token[len(core) :]


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, list | tuple) and any(isinstance(v, str) for v in value):
        return type(value)(scrub_text(v) if isinstance(v, str) else v for v in value)
    return value


def _scrub_attributes(attributes: Mapping[str, Any]) -> dict[str, Any] | None:
    """The scrubbed attributes, or None when nothing had to change."""
    changed = False
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if is_secret_key(key):
            changed = True
            continue
        clean = _scrub_value(value)
        changed = changed or clean != value
        out[key] = clean
    return out if changed else None


def scrub_span(span: Span) -> Span:
    """``span`` itself when it holds no credential, else a scrubbed copy (name, status
    description, attributes, event attributes)."""
    update: dict[str, Any] = {}
    attributes = _scrub_attributes(span.attributes)
    if attributes is not None:
        update["attributes"] = attributes
    events = list(_scrub_events(span.events))
    if any(new is not old for new, old in zip(events, span.events, strict=True)):
        update["events"] = events
    description = span.status.description
    if description is not None and scrub_text(description) != description:
        update["status"] = span.status.model_copy(update={"description": scrub_text(description)})
    if scrub_text(span.name) != span.name:
        update["name"] = scrub_text(span.name)
    return span.model_copy(update=update) if update else span


def _scrub_events(events: Iterable[Any]) -> Iterable[Any]:
    for event in events:
        attributes = _scrub_attributes(event.attributes or {})
        yield event if attributes is None else event.model_copy(update={"attributes": attributes})
