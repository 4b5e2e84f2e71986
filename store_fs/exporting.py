"""Rollouts as self-contained JSON documents: the rollout, its attempts and its spans.

What ``agl export`` and ``agl rollouts show`` print. A document is the rollout's upstream
JSON without its ``attempt`` key, plus ``attempts`` (oldest first) and ``spans`` (in
sequence order); read-only, over any :class:`~store_fs.lightning_store.LightningStore`.

Spans are read as ``query_spans`` reads them, passing over a line that does not parse (with a
warning): a document can lack a span, the reward maybe. :func:`span_damage` says so for a
:class:`~store_fs.FileStore`, as the data views find it (``agl data rollouts`` leaves such a
rollout out), so that ``agl export`` names the damage and exits 7 rather than pass the
document for whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from store_fs.lightning_store import LightningStore

if TYPE_CHECKING:
    from store_fs.store import FileStore

__all__ = ["rollout_document", "span_damage"]


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


def span_damage(store: FileStore, document: dict[str, Any]) -> list[str]:
    """What is damaged in the span files of ``document``'s finished attempts (one line each, as
    ``agl check`` and the data views name it); [] when every one reads whole. A live attempt's
    bytes after its last newline are a write in progress, not damage."""
    from store_fs.datasets.views import attempt_span_damage

    found = []
    for attempt in document.get("attempts", []):
        damage = attempt_span_damage(
            store, document["rollout_id"], attempt["sequence_id"], attempt["attempt_id"], attempt["status"]
        )
        if damage is not None:
            found.append(damage)
    return found
