"""``FileStore``: the :class:`~store_fs.lightning_store.LightningStore` API on a directory.

The contracts of the methods are written once, on the protocol.
Any number of processes, on one machine or sharing the directory over NFS, may
open the same store at once; no server and no lock on the hot path are needed.
The reaper (timeouts, dead runners) runs inside the methods upstream runs its
watchdog in, debounced by ``scan_debounce_seconds``, and while waiting.

Deviations from upstream are deliberate and listed in docs/deviations.md:
unknown ids in mutating calls raise typed not-found errors (``ValueError``
subclasses); ``cancelled`` is sticky; ``query_spans`` with ``filter_logic="or"``
and no conditions returns everything in scope; sequence ids can only be
allocated for rollouts that exist.

The class is assembled from one module per part of the API: ``_base`` builds the
shared components and helpers (and creates or opens the directory), and each of
``_stats_ops``, ``_dispatch_ops`` (start, enqueue, dequeue), ``_rollout_ops``,
``_attempt_ops``, ``_resource_ops``, ``_span_ops``, ``_wait_ops`` and ``_worker_ops``
adds one part as a mixin over ``_base.StoreCore``. ``LightningStore`` comes last in
the bases: mypy checks every mixin's signatures against it, and a method no mixin
implements would leave the class abstract.
"""

from __future__ import annotations

# ``X as X`` marks a re-export: FULL_RECHECK_SECONDS stays importable here
# (``wait_for_rollouts`` reads it from ``store_fs.store._wait_ops``, so that is the module to patch).
from store_fs.lightning_store import LightningStore
from store_fs.store._attempt_ops import AttemptMethods
from store_fs.store._base import init_store
from store_fs.store._dispatch_ops import DispatchMethods
from store_fs.store._resource_ops import ResourceMethods
from store_fs.store._rollout_ops import RolloutMethods
from store_fs.store._span_ops import SpanMethods
from store_fs.store._stats_ops import StatsMethods
from store_fs.store._wait_ops import FULL_RECHECK_SECONDS as FULL_RECHECK_SECONDS
from store_fs.store._wait_ops import WaitMethods
from store_fs.store._worker_ops import WorkerMethods

__all__ = ["FileStore", "init_store"]


class FileStore(
    StatsMethods,
    DispatchMethods,
    RolloutMethods,
    AttemptMethods,
    ResourceMethods,
    SpanMethods,
    WaitMethods,
    WorkerMethods,
    LightningStore,
):
    """A LightningStore kept in the directory ``root``.

    Spans returned by ``query_spans`` are the caller's to change except their nested values
    (``status``, ``context``, ``resource``, events, links, lists inside ``attributes``), which
    this process's span read cache shares: replace them, do not change them in place.

    Args:
        root: the store directory.
        create: create the store if ``root`` holds none (else :class:`StoreNotFoundError`).
        durability: ``"process"`` survives ``kill -9`` of any process: every call's data
            is handed to the kernel before it returns. ``"fsync"`` also survives power
            loss: data and directories are fsynced (threads syncing one file or
            directory at once share one sync). The store has a setting of its own
            (``FORMAT.json``, set by ``init_store(root, durability=...)`` or ``agl init
            --durability``; a store made here records this argument, ``"process"`` when
            None), and this process uses the stronger of the two: it may ask for
            ``"fsync"`` on any store, and cannot weaken a store set to ``"fsync"``. The
            result is :attr:`durability`.
        scan_debounce_seconds: at most one reaper scan per this many seconds per process
            (0: before every eligible call, like upstream's tests).
        claim_grace_seconds: how long a decision or claim may stay half-applied before
            another process finishes it for its (presumably dead) owner.
        clock_skew_seconds: slack when judging heartbeats written by another machine's clock.
        watch_mode: ``"auto"`` (polling on network filesystems, inotify elsewhere),
            ``"inotify"`` or ``"poll"``.
        span_cache_bytes: how many bytes of span files each process keeps decoded, so
            reading a rollout's spans again decodes only the lines appended since
            (the objects take about three times this much memory; 0 turns it off).
        clock: injectable time source (tests).
    """
