"""``AglModel``: the base of every data model, and how foreign objects are accepted.

Upstream Agent-lightning 0.3's pydantic objects (``agentlightning.PromptTemplate``,
``RolloutConfig``, ``Span`` ...) are other classes with the same fields. Validation reads a
model's fields from any object's attributes (pydantic's ``from_attributes``), so those objects
are accepted wherever an agl model is expected, recognised by their fields and never by
class: nothing here imports upstream. What comes back is always agl's own model, whose JSON
is identical.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["AglModel"]


class AglModel(BaseModel):
    # defer_build: a model's validator is built when first used, not when its class is made;
    # a command uses a few of the models, and building them all cost every agl start ~20 ms.
    model_config = ConfigDict(from_attributes=True, defer_build=True)
