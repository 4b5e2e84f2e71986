"""Tunable resources (prompt templates, LLM endpoints) and their versioned snapshots."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from store_fs.models.model_base import AglModel
from store_fs.models.rollout_types import AttemptedRollout

__all__ = [
    "LLM",
    "NamedResources",
    "PromptTemplate",
    "ProxyLLM",
    "Resource",
    "ResourceUnion",
    "ResourcesUpdate",
]


class Resource(AglModel):
    resource_type: Any

    @model_validator(mode="before")
    @classmethod
    def _fields_of_another_model(cls, data: Any) -> Any:
        # Another class's model (upstream's) is taken by its dumped fields rather than read
        # attribute by attribute: upstream's ProxyLLM warns whenever its endpoint is read.
        dump = getattr(data, "model_dump", None)
        if dump is not None and not isinstance(data, Resource):
            return dump()
        return data


class LLM(Resource):
    """An OpenAI-compatible endpoint and the model to call on it."""

    resource_type: Literal["llm"] = "llm"
    endpoint: str
    model: str
    api_key: str | None = None
    sampling_parameters: dict[str, Any] = Field(default_factory=dict)

    def get_base_url(self, *args: Any, **kwargs: Any) -> str:
        return self.endpoint


class ProxyLLM(LLM):
    """An LLM reached through a proxy that routes by rollout and attempt."""

    resource_type: Literal["proxy_llm"] = "proxy_llm"  # type: ignore[assignment]

    def get_base_url(self, rollout_id: str | None = None, attempt_id: str | None = None) -> str:
        """``endpoint`` with ``/rollout/<rid>/attempt/<aid>`` inserted before a trailing ``/v1``."""
        if rollout_id is None and attempt_id is None:
            return self.endpoint
        if not isinstance(rollout_id, str) or not isinstance(attempt_id, str):
            raise ValueError("rollout_id and attempt_id must both be strings")
        base = self.endpoint[:-1] if self.endpoint.endswith("/") else self.endpoint
        has_v1 = base.endswith("/v1")
        if has_v1:
            base = base[: -len("/v1")]
        routed = f"{base}/rollout/{rollout_id}/attempt/{attempt_id}"
        return routed + "/v1" if has_v1 else routed

    def with_attempted_rollout(self, rollout: AttemptedRollout) -> LLM:
        return LLM(
            endpoint=self.get_base_url(rollout.rollout_id, rollout.attempt.attempt_id),
            model=self.model,
            api_key=self.api_key,
            sampling_parameters=dict(self.sampling_parameters),
        )


class PromptTemplate(Resource):
    resource_type: Literal["prompt_template"] = "prompt_template"
    template: str
    engine: Literal["jinja", "f-string", "poml"]

    def format(self, **kwargs: Any) -> str:
        if self.engine != "f-string":
            raise NotImplementedError(f"formatting with engine {self.engine!r} is not supported")
        return self.template.format(**kwargs)


ResourceUnion = Annotated[LLM | ProxyLLM | PromptTemplate, Field(discriminator="resource_type")]
NamedResources = dict[str, ResourceUnion]


class ResourcesUpdate(AglModel):
    """One snapshot of named resources; ``version`` counts updates of the same ``resources_id``."""

    resources_id: str
    create_time: float
    update_time: float
    version: int
    resources: NamedResources
