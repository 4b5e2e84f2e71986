"""The attempt's root span and the credential scrub, on spans of an agl trace context."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import context as otel_context

from store_fs.emitter import emit_annotation, emit_reward
from store_fs.models import Span
from store_fs.tracing import credential_scrub
from store_fs.tracing.credential_scrub import MASK, remember_client_secrets, scrub_span, scrub_text
from store_fs.tracing.rollout_binding import RolloutBinding, StoreWriter
from store_fs.tracing.root_span import adopt_root_span, rollout_root_span
from store_fs.tracing.tracer import OtelTracer

KEY = "sk-unit-0123456789abcdefSECRET"


async def _trace(body: Any) -> list[Span]:
    """Run ``body(tracer, binding)`` in an unbound trace context; the spans it left."""
    tracer = OtelTracer(instrument_openai=False)
    with tracer.lifespan():
        try:
            async with tracer.trace_context("attempt-x") as binding:
                await body(tracer, binding)
        except RuntimeError:
            pass
        return tracer.get_last_trace()


def _tree_ok(spans: list[Span]) -> Span:
    [root] = [s for s in spans if s.parent_id is None]
    ids = {s.span_id for s in spans}
    for span in spans:
        assert span.trace_id == root.trace_id
        assert span is root or span.parent_id in ids
    return root


def test_every_span_of_the_context_hangs_under_one_root() -> None:
    async def body(tracer: OtelTracer, binding: RolloutBinding) -> None:
        with tracer.operation("plan"):
            emit_reward(0.5)
        stray = tracer._tracer().start_span("stray", context=otel_context.Context())  # a new trace
        stray.end()
        late = Span.from_attributes(attributes={"k": 1}, name="built-by-caller")
        binding.submit(late)

    spans = asyncio.run(_trace(body))
    root = _tree_ok(spans)
    assert root.name == "attempt-x.session"
    assert root.status.status_code == "OK"
    by_name = {s.name: s for s in spans}
    assert by_name["agentlightning.annotation"].parent_id == by_name["plan"].span_id
    assert by_name["plan"].parent_id == root.span_id
    assert by_name["stray"].parent_id == root.span_id  # re-parented by the binding
    assert by_name["built-by-caller"].parent_id == root.span_id
    assert by_name["built-by-caller"].parent is not None
    assert by_name["built-by-caller"].parent.span_id == root.span_id


def test_the_root_records_an_agent_error() -> None:
    async def body(tracer: OtelTracer, binding: RolloutBinding) -> None:
        emit_annotation({"before": "the error"})
        raise RuntimeError("agent bug")

    spans = asyncio.run(_trace(body))
    root = _tree_ok(spans)
    assert root.status.status_code == "ERROR"
    assert root.status.description == "RuntimeError: agent bug"
    assert [e.name for e in root.events] == ["exception"]
    assert len(spans) == 2


def test_a_tracer_with_its_own_session_span_adopts_it_as_root() -> None:
    tracer = OtelTracer(instrument_openai=False)
    with tracer.lifespan():
        binding = RolloutBinding(None, None, None, StoreWriter())
        session = tracer._tracer().start_span("their.session")
        adopt_root_span(binding, session.get_span_context())
        binding.submit(Span.from_attributes(attributes={}, name="orphan"))
        session.end()
    [orphan] = binding.spans
    context = session.get_span_context()
    assert orphan.parent_id == f"{context.span_id:016x}"
    assert orphan.trace_id == f"{context.trace_id:032x}"
    assert orphan.context is not None
    assert orphan.context.trace_id == orphan.trace_id


def test_an_error_quoting_a_key_is_stored_masked() -> None:
    credential_scrub.remember_secret(KEY)

    async def body(tracer: OtelTracer, binding: RolloutBinding) -> None:
        raise RuntimeError(f"server said: bad key {KEY}")

    [root] = asyncio.run(_trace(body))
    assert root.status.description == f"RuntimeError: server said: bad key {MASK}"
    assert KEY not in root.model_dump_json()


def test_root_span_context_manager_ends_the_span_once() -> None:
    tracer = OtelTracer(instrument_openai=False)
    with tracer.lifespan():
        binding = RolloutBinding(None, None, None, StoreWriter())
        with pytest.raises(ValueError, match="x"), rollout_root_span(tracer._tracer(), binding, "r") as span:  # noqa: PT012
            assert span.is_recording()
            raise ValueError("x")
        assert not span.is_recording()
        assert binding.root is not None
        assert binding.root[1] == f"{span.get_span_context().span_id:016x}"


class _Client:
    api_key = KEY
    _custom_headers = {"Api-Key": "custom-SECRET-header", "X-Plain": "visible"}


def test_scrub_masks_known_secrets_and_drops_credential_attributes() -> None:
    remember_client_secrets(_Client(), {"Authorization": "Bearer extra-SECRET-bearer"})
    span = Span.from_attributes(
        name="openai.chat.completion",
        attributes={
            "gen_ai.request.headers": "{'api-key': 'x'}",  # AgentOps records str(extra_headers)
            "http.request.header.authorization": "Bearer zzzzzzzzzz",
            "gen_ai.prompt.0.content": f"my key is {KEY} and custom-SECRET-header",
            "gen_ai.usage.prompt_tokens": 12,
            "list": ["extra-SECRET-bearer", "ok"],
            "note": "EMPTY",
        },
    )
    clean = scrub_span(span)
    assert clean is not span
    assert "gen_ai.request.headers" not in clean.attributes
    assert "http.request.header.authorization" not in clean.attributes
    assert clean.attributes["gen_ai.prompt.0.content"] == f"my key is {MASK} and {MASK}"
    assert clean.attributes["gen_ai.usage.prompt_tokens"] == 12
    assert clean.attributes["list"] == [MASK, "ok"]
    assert clean.attributes["note"] == "EMPTY"
    assert "SECRET" not in clean.model_dump_json()


def test_scrub_leaves_clean_spans_alone_and_masks_bearer_and_sk_keys() -> None:
    span = Span.from_attributes(name="n", attributes={"a": "hello", "b": 1})
    assert scrub_span(span) is span
    assert scrub_text("auth: Bearer abc.def-ghi_jkl") == f"auth: Bearer {MASK}"
    assert scrub_text("use sk-proj-ABCDEFGHIJKLMNOPqrst now") == f"use {MASK} now"
    assert scrub_text("sk-short and bearer x") == "sk-short and bearer x"


def test_short_secrets_are_not_masked() -> None:
    credential_scrub.remember_secret("EMPTY")
    assert scrub_text("EMPTY") == "EMPTY"


def test_ordinary_words_are_never_masked() -> None:
    """A prompt stored for training must say what was sent: "a bearer instrument" and
    "sk-learn-compatible-estimators" read as credentials, and a local proxy's placeholder key
    "anything" blanked that word out of every prompt (found by an adversarial pass)."""
    credential_scrub.remember_secret("anything")
    text = (
        "Explain what a bearer instrument is, and how the torch-bearer position differs. "
        "Use sk-learn-compatible-estimators. Is there anything else? It is a bearer instrument. "
        "A bearer document/title, the bearer sentence= ok."
    )
    assert scrub_text(text) == text
    credential_scrub.remember_secret("a-local-proxy-placeholder")  # long: masked even so
    assert scrub_text("key a-local-proxy-placeholder") == f"key {MASK}"
    generated = "sk-" + "abcdefghij" * 4 + "Q7"
    assert scrub_text(f"Authorization: Bearer {generated}") == f"Authorization: Bearer {MASK}"
    assert scrub_text(f"key={generated}") == f"key={MASK}"
    assert scrub_text("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x") == f"Bearer {MASK}"
