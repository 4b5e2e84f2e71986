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

from .clock import Clock, FakeClock, SystemClock
from .errors import (
    AglError,
    AttemptNotFoundError,
    ConflictError,
    CorruptRecordError,
    FormatVersionError,
    InvalidIdError,
    NotFoundError,
    ResourcesNotFoundError,
    RolloutNotFoundError,
    StoreNotFoundError,
    WorkerNotFoundError,
)
from .models import *  # noqa: F403 - the data model is part of the public surface
from .models import __all__ as _models_all
from .store import FileStore, init_store

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
    "ResourcesNotFoundError",
    "RolloutNotFoundError",
    "StoreNotFoundError",
    "SystemClock",
    "WorkerNotFoundError",
    "__version__",
    "init_store",
    *_models_all,
]
