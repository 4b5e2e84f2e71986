"""From runs to training data: views of a store, filters, a cursor for trainers, and exports.

>>> from store_fs.datasets import RolloutFilter, TrainingData
>>> data = TrainingData(store, "triplets", RolloutFilter.of(endings=["succeeded"]))  # doctest: +SKIP
>>> batch = await data.read_new()                      # rollouts finished since the last read
>>> data.save_cursor("runs/exp1/../exp1-cursor.json")   # resume from here after a restart

Views (``triplets``, ``messages``, ``rollouts``): :mod:`store_fs.datasets.views`; how a rollout
ended and the filters: :mod:`store_fs.datasets.rollout_filter`; the cursor:
:mod:`store_fs.datasets.cursor`; JSON Lines and Parquet output: :mod:`store_fs.datasets.row_writers`.
"""

from __future__ import annotations

from store_fs.datasets.cursor import Cursor
from store_fs.datasets.data_export import export_view
from store_fs.datasets.message_builder import MessagesError, build_messages
from store_fs.datasets.redaction import Redactor
from store_fs.datasets.rollout_filter import (
    DEFAULT_ENDINGS,
    ENDINGS,
    Ending,
    RolloutFilter,
    ending_of,
    parse_time,
)
from store_fs.datasets.triplet_builder import TripletError, build_triplets
from store_fs.datasets.views import VIEWS, TrainingData, View, ViewCounts, rollout_rows, view_rows

__all__ = [
    "DEFAULT_ENDINGS",
    "ENDINGS",
    "VIEWS",
    "Cursor",
    "Ending",
    "MessagesError",
    "Redactor",
    "RolloutFilter",
    "TrainingData",
    "TripletError",
    "View",
    "ViewCounts",
    "build_messages",
    "build_triplets",
    "ending_of",
    "export_view",
    "parse_time",
    "rollout_rows",
    "view_rows",
]
