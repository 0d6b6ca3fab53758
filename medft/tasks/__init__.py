"""Applications: patch sampling for training and the paper's evaluation per application."""

from __future__ import annotations

from typing import Any

from medft.errors import ConfigError
from medft.tasks.base import Task


def get_task(app: str, splits: dict, task_config: Any, seed: int) -> Task:
  """The task object for a dataset's application (`cimt`, `polyp`, `pe`, `frames`)."""
  if app == 'cimt':
    from medft.tasks.cimt import CimtTask
    return CimtTask(splits, task_config, seed)
  if app == 'polyp':
    from medft.tasks.polyp import PolypTask
    return PolypTask(splits, task_config, seed)
  if app == 'pe':
    from medft.tasks.pe import PeTask
    return PeTask(splits, task_config, seed)
  if app == 'frames':
    from medft.tasks.frames import FramesTask
    return FramesTask(splits, task_config, seed)
  raise ConfigError(f'application {app!r} has no task; available: cimt, polyp, pe, frames.')
