"""Child-process bodies for tests/test_power_cut.py ("spawn"): the loop, run until SIGKILLed.

Every process opens the store on the crash mount (``tests/crash_fuse.py``) without naming
a durability: the store was made with ``durability="fsync"``, which every opener follows
(docs/format.md, "Durability"), so the cuts also test that setting. Each records every
call that *returned* as one JSON line in a journal on the real disk (outside the mount),
written with one ``write(2)`` and ``fdatasync``-ed before the next call starts. So after
the power cut every line names a call the store had acknowledged, which must have
survived; a call cut short has no line.

Journal lines (``event``):

* ``enqueued`` (``rollout_id``): ``enqueue_rollout`` returned.
* ``dequeued`` (``rollout_id``, ``attempt_id``): ``dequeue_rollout`` handed out that attempt.
* ``span`` (``rollout_id``, ``attempt_id``, ``span_id``, ``sequence_id``): ``add_span`` returned.
* ``completed`` (``rollout_id``, ``attempt_id``, ``status``): ``update_attempt`` returned.
* ``error`` (``error``): the process failed (a traceback), which the test reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import traceback
from typing import Any

from mp_workers import make_span

from store_fs import EnqueueRolloutRequest, FileStore
from store_fs.models import AttemptStatus


class Journal:
    """Append-only JSON lines, each durable on the real disk before :meth:`log` returns."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(self, event: str, **fields: Any) -> None:
        os.write(self.fd, (json.dumps({"event": event, **fields}) + "\n").encode())
        os.fdatasync(self.fd)


def _open(root: str) -> FileStore:
    store = FileStore(root, create=False, watch_mode="poll", scan_debounce_seconds=3600)
    assert store.durability == "fsync", "the store's setting was not followed"
    return store


def _guarded(journal_path: str, body: Any) -> None:
    journal = Journal(journal_path)
    try:
        asyncio.run(body(journal))
    except BaseException:
        journal.log("error", pid=os.getpid(), error=traceback.format_exc())
        raise


def algorithm(root: str, journal_path: str, pause: float) -> None:
    """Enqueue rollouts (``pause`` seconds apart) until killed: one, then a batch of three
    (``enqueue_many_rollouts``, which syncs once at its end), in turn."""

    async def body(journal: Journal) -> None:
        store = _open(root)
        serial = 0
        while True:
            if serial % 2 == 0:
                rollouts = [await store.enqueue_rollout(input={"task": serial})]
            else:
                batch = [EnqueueRolloutRequest(input={"task": serial, "part": i}) for i in range(3)]
                rollouts = list(await store.enqueue_many_rollouts(batch))
            for rollout in rollouts:
                journal.log("enqueued", rollout_id=rollout.rollout_id)
            serial += 1
            await asyncio.sleep(pause)

    _guarded(journal_path, body)


def runner(root: str, journal_path: str, worker_id: str, spans: int, seed: int) -> None:
    """Dequeue, add ``spans`` spans, complete (``succeeded``; ``failed`` one time in four); until killed."""

    async def body(journal: Journal) -> None:
        store = _open(root)
        rng = random.Random(seed)
        while True:
            attempted = await store.dequeue_rollout(worker_id=worker_id)
            if attempted is None:
                await asyncio.sleep(0.01)
                continue
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            journal.log("dequeued", rollout_id=rid, attempt_id=aid)
            for _ in range(spans):
                seq = await store.get_next_span_sequence_id(rid, aid)
                span = make_span(rid, aid, seq)
                await store.add_span(span)
                journal.log("span", rollout_id=rid, attempt_id=aid, span_id=span.span_id, sequence_id=seq)
            status: AttemptStatus = "failed" if rng.random() < 0.25 else "succeeded"
            await store.update_attempt(rid, aid, status=status)
            journal.log("completed", rollout_id=rid, attempt_id=aid, status=status)

    _guarded(journal_path, body)
