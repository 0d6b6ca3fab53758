"""The interface every application's task offers the trainer (`Task`), and what tasks share.

A task turns a dataset's splits into training batches and evaluation patches, and scores a
trained network on the test split in the paper's terms. The trainer reaches it only through
`Task`, so a new application is one module under `medft/tasks/` whose class satisfies it
(checked statically; nothing is inherited from `Task`). The network comes in as a
`PredictFn`: uint8 patches (N, h, w, 3) -> class probabilities (N, num_classes).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from medft import metrics

PredictFn = Callable[[np.ndarray], np.ndarray]
# (a split's `device_views.Source`, patch descriptors) -> class probabilities: the network
# with the views cut on the device (`medft.trainer.make_view_predict`).
ViewPredictFn = Callable[[Any, dict], np.ndarray]


class Task(Protocol):
  """What `medft.trainer.train` calls on a task.

  A task class is built as `cls(splits, task_config, seed)` by `medft.tasks.get_task`, with
  `splits` the dataset's {'train', 'validation', 'test'} -> sequence of examples.
  """

  app: str
  num_classes: int

  @property
  def epoch_examples(self) -> int:
    """Patches in one epoch (what `train.epochs` counts)."""

  def train_batch(self, step: int, batch: int, host_slice: slice = slice(None)) -> dict:
    """{'image': uint8 (n, h, w, 3), 'label': int32 (n,)}: this host's slice of global batch
    `step`, a pure function of the seed and `step` (so a resumed run sees the same batches)."""

  def eval_patches(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed (patches, labels, unit index) of `split`, for the validation AUC."""

  def patch_auc(self, probs: np.ndarray, labels: np.ndarray) -> float:
    """The validation metric (early stopping) of `eval_patches` probabilities."""

  def eval_size(self, split: str) -> int:
    """Patches `evaluate(split)` sends through the network (its progress line's total)."""

  def evaluate(self, predict: PredictFn, split: str = 'test', n_boot: int = 1000) -> dict:
    """The paper's metrics of `split` with bootstrap intervals over units (results.json
    `test`; its schema is the app's `medft.apps` declaration).

    A detection task (`tasks/detection.py`) also takes `predict_views`, a `ViewPredictFn`,
    and then cuts its test views on the device; the trainer passes it when the task's
    `views_on_device()` says so (`task.views_on='device'`)."""


def positive_class_auc(probs: np.ndarray, labels: np.ndarray) -> float:
  """ROC AUC of the probability of class 1 against `labels == 1` (two-class tasks)."""
  return metrics.roc_auc(labels == 1, probs[:, 1])
