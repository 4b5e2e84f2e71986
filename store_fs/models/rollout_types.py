"""Rollouts, attempts, workers: field names and JSON shapes identical to upstream 0.3."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from store_fs.models.model_base import AglModel

__all__ = [
    "TERMINAL_ROLLOUT_STATUSES",
    "Attempt",
    "AttemptStatus",
    "AttemptedRollout",
    "EnqueueRolloutRequest",
    "Rollout",
    "RolloutConfig",
    "RolloutMode",
    "RolloutStatus",
    "TaskInput",
    "Worker",
    "WorkerStatus",
    "is_finished",
    "is_queuing",
    "is_running",
]

RolloutStatus = Literal["queuing", "preparing", "running", "failed", "succeeded", "cancelled", "requeuing"]
AttemptStatus = Literal["preparing", "running", "failed", "succeeded", "unresponsive", "timeout"]
RolloutMode = Literal["train", "val", "test"]
WorkerStatus = Literal["idle", "busy", "unknown"]
TaskInput = Any

TERMINAL_ROLLOUT_STATUSES: frozenset[str] = frozenset({"failed", "succeeded", "cancelled"})


class RolloutConfig(AglModel):
    """Retry and liveness policy of a rollout."""

    timeout_seconds: float | None = None
    unresponsive_seconds: float | None = None
    max_attempts: int = Field(default=1, ge=1)
    retry_condition: list[AttemptStatus] = Field(default_factory=list)


class Rollout(AglModel):
    rollout_id: str
    input: TaskInput
    start_time: float
    end_time: float | None = None
    mode: RolloutMode | None = None
    resources_id: str | None = None
    status: RolloutStatus = "queuing"
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    metadata: dict[str, Any] | None = None


class Attempt(AglModel):
    rollout_id: str
    attempt_id: str
    sequence_id: int
    start_time: float
    end_time: float | None = None
    status: AttemptStatus = "preparing"
    worker_id: str | None = None
    last_heartbeat_time: float | None = None
    metadata: dict[str, Any] | None = None


class AttemptedRollout(Rollout):
    """A rollout together with its latest attempt (the ``attempt`` key on the wire)."""

    attempt: Attempt

    @model_validator(mode="after")
    def _attempt_belongs_to_rollout(self) -> AttemptedRollout:
        if self.attempt.rollout_id != self.rollout_id:
            raise ValueError(
                f"attempt {self.attempt.attempt_id} belongs to rollout {self.attempt.rollout_id}, "
                f"not {self.rollout_id}"
            )
        return self


class EnqueueRolloutRequest(AglModel):
    input: TaskInput
    mode: RolloutMode | None = None
    resources_id: str | None = None
    config: RolloutConfig | None = None
    metadata: dict[str, Any] | None = None


class Worker(AglModel):
    worker_id: str
    status: WorkerStatus = "unknown"
    heartbeat_stats: dict[str, Any] | None = None
    last_heartbeat_time: float | None = None
    last_dequeue_time: float | None = None
    last_busy_time: float | None = None
    last_idle_time: float | None = None
    current_rollout_id: str | None = None
    current_attempt_id: str | None = None


def is_queuing(rollout: Rollout) -> bool:
    return rollout.status in ("queuing", "requeuing")


def is_running(rollout: Rollout) -> bool:
    return rollout.status in ("preparing", "running")


def is_finished(rollout: Rollout) -> bool:
    return rollout.status in TERMINAL_ROLLOUT_STATUSES
