"""Tasks: what is learnt and how it is judged (see :mod:`common.tasks.base`). One module per
kind and one line in :data:`TASKS`; the trainer, the sites' evaluation, the server's pooling,
the report and ``--help`` go through the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.config import RunConfig, TaskKind
from common.errors import ConfigError
from common.tasks.base import LOSS_BOUND, Statistics, Task, flat, pooled, unflat
from common.tasks.binary_risk import BinaryRisk
from common.tasks.classification import Classification
from common.tasks.token_classification import TokenClassification

__all__ = ["LOSS_BOUND", "TASKS", "Statistics", "Task", "flat", "pooled", "task_for", "unflat"]


@dataclass(frozen=True)
class TaskEntry:
    summary: str
    build: Callable[[RunConfig, tuple[str, ...]], Task]
    per_token: bool = False  # the model scores every token (a token head), not the whole record


def _binary_risk(cfg: RunConfig, class_names: tuple[str, ...]) -> Task:
    if len(class_names) != 2:
        raise ConfigError(
            f"task binary-risk needs exactly two classes, got {len(class_names)}"
            + (f" ({', '.join(class_names)})" if class_names else "; set class-names")
        )
    if cfg.task.positive_label not in class_names:
        raise ConfigError(
            f"positive-label must be one of the classes {', '.join(class_names)}, got {cfg.task.positive_label!r}"
        )
    try:
        return BinaryRisk(
            positive=class_names.index(cfg.task.positive_label),
            threshold=cfg.task.decision_threshold,
            bins=cfg.task.score_bins,
            class_weights=cfg.task.class_weight_list,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _token_classification(cfg: RunConfig, class_names: tuple[str, ...]) -> Task:
    if not class_names:
        raise ConfigError("task token-classification needs its tag set: set class-names, e.g. O,B-DRUG,I-DRUG")
    try:
        return TokenClassification(class_names, entity_bound=cfg.task.entity_bound)
    except ValueError as exc:
        raise ConfigError(f"class-names: {exc}") from None


TASKS: dict[TaskKind, TaskEntry] = {
    TaskKind.CLASSIFICATION: TaskEntry(Classification.summary, lambda cfg, names: Classification()),
    TaskKind.BINARY_RISK: TaskEntry(BinaryRisk.summary, _binary_risk),
    TaskKind.TOKEN_CLASSIFICATION: TaskEntry(TokenClassification.summary, _token_classification, per_token=True),
}


def task_for(cfg: RunConfig, class_names: tuple[str, ...]) -> Task:
    """The job's task, given the classes its labels map to (by position)."""
    return TASKS[TaskKind(cfg.task.kind)].build(cfg, class_names)
