"""Rollouts as self-contained JSON documents: the rollout, its attempts and its spans.

What ``agl export`` and ``agl rollouts show`` print. A document is the rollout's upstream
JSON without its ``attempt`` key, plus ``attempts`` (oldest first) and ``spans`` (in
sequence order); read-only, over any :class:`~store_fs.lightning_store.LightningStore`.
"""

from __future__ import annotations

from typing import Any

from store_fs.lightning_store import LightningStore

__all__ = ["rollout_document"]


async def rollout_document(
    store: LightningStore, rollout_id: str, *, spans: bool = True
) -> dict[str, Any] | None:
    """The rollout with its attempts (and, with ``spans``, its spans); None for an unknown id."""
    rollout = await store.get_rollout_by_id(rollout_id)
    if rollout is None:
        return None
    data: dict[str, Any] = rollout.model_dump(mode="json")
    data.pop("attempt", None)
    data["attempts"] = [a.model_dump(mode="json") for a in await store.query_attempts(rollout_id)]
    if spans:
        data["spans"] = [s.model_dump(mode="json") for s in await store.query_spans(rollout_id)]
    return data
