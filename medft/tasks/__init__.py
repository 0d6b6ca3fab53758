"""Applications: patch sampling for training and the paper's evaluation per application.

Each application's task is a class in `medft/tasks/<app>.py`, registered under the app's name
(`@TASKS.register('cimt')`, see `medft.registry`) and satisfying `medft.tasks.base.Task`; it is
imported only when a run of that application asks for it.
"""

from __future__ import annotations

from typing import Any

from medft.registry import Registry
from medft.tasks.base import Task

TASKS: Registry[type] = Registry('task', 'app', 'medft.tasks')


def get_task(app: str, splits: dict, task_config: Any, seed: int) -> Task:
  """The task object for a dataset's application (`cimt`, `polyp`, `pe`, `frames`)."""
  return TASKS[app](splits, task_config, seed)
