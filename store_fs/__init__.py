"""store_fs: an Agent-lightning LightningStore kept in a directory.

>>> import asyncio, tempfile
>>> from store_fs import FileStore
>>> store = FileStore(tempfile.mkdtemp())
>>> rollout = asyncio.run(store.enqueue_rollout(input={"question": "2+2?"}))
>>> rollout.status
'queuing'
"""

from __future__ import annotations

__version__ = "0.1.0"

from store_fs.clock import Clock, FakeClock, SystemClock
from store_fs.errors import (
    AglError,
    AttemptNotFoundError,
    ConflictError,
    CorruptRecordError,
    FormatVersionError,
    InvalidIdError,
    NotFoundError,
    RemoteStoreError,
    ResourcesNotFoundError,
    RolloutNotFoundError,
    StoreNotFoundError,
    UnstorableValueError,
    WorkerNotFoundError,
)
from store_fs.models import *  # noqa: F403 - the data model is part of the public surface
from store_fs.models import __all__ as _models_all
from store_fs.store import FileStore, init_store

# Names upstream exposes at the top level, loaded on first use: the runner and tracers pull in
# OpenTelemetry and OpenAI, which a process that only reads the store should not pay for.
_LAZY = {
    "LitAgent": "store_fs.agent",
    "rollout": "store_fs.agent",
    "prompt_rollout": "store_fs.agent",
    "llm_rollout": "store_fs.agent",
    "LitAgentRunner": "store_fs.runner",
    "emit_reward": "store_fs.emitter",
    "emit_message": "store_fs.emitter",
    "emit_annotation": "store_fs.emitter",
    "find_final_reward": "store_fs.rewards",
    "get_reward_value": "store_fs.rewards",
    "Tracer": "store_fs.tracing",
    "OtelTracer": "store_fs.tracing",
    "Trainer": "store_fs.trainer",
    "Algorithm": "store_fs.trainer",
    "algo": "store_fs.trainer",
    "LightningStoreClient": "store_fs.client",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'store_fs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AglError",
    "AttemptNotFoundError",
    "Clock",
    "ConflictError",
    "CorruptRecordError",
    "FakeClock",
    "FileStore",
    "FormatVersionError",
    "InvalidIdError",
    "NotFoundError",
    "RemoteStoreError",
    "ResourcesNotFoundError",
    "RolloutNotFoundError",
    "StoreNotFoundError",
    "SystemClock",
    "UnstorableValueError",
    "WorkerNotFoundError",
    "__version__",
    "init_store",
    *_models_all,
]
