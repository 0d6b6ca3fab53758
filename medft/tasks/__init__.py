"""Applications: patch sampling for training and the paper's evaluation per application."""

from __future__ import annotations

from typing import Any


def get_task(app: str, splits: dict, task_config: Any, seed: int):
  """The task object for a dataset's application (`cimt`, ...)."""
  if app == 'cimt':
    from medft.tasks.cimt import CimtTask
    return CimtTask(splits, task_config, seed)
  raise ValueError(f'application {app!r} has no task yet; available: cimt.')
