"""What each application reports: one declaration per app, read by `medft.report`.

An application (`cimt`, `polyp`, `pe`, `frames`: the name a run records as `app` in its
results.json) declares in `medft/apps/<app>.py` a `SPEC`, registered under its name in `APPS`
(`medft.registry`: looking an app up imports its module):
  * its results.json schema: the keys its task writes under `test` and in each per-unit
    record, checked before a report uses a file (a wrong shape is an InputFileError);
  * its unit of independence (subject, video, volume) and how the per-unit records are read;
  * its operating points with their units (sensitivity at each FP/frame, at 1..5 FP/volume,
    at 10/15/20% FPR; LI, MA, CIMT error in µm) plus AUC, each with the pooled metric that
    is reported and the per-unit value the paired rank test uses;
  * context numbers that are stated but not compared (candidate recall, ROI edge share);
  * its plots and their axes.
The report has no per-app branches: it iterates over these declarations. Nothing here
imports the report, the tasks or JAX (metrics only), so any layer may read a spec.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medft.registry import Registry

# Keys every results.json holds (written by medft.trainer.train) that the report reads.
RESULTS_KEYS = ('app', 'arm', 'fraction', 'seed', 'steps', 'val_auc', 'test')

Record = Any  # one unit's test data, as the app's `units` function returns it


@dataclasses.dataclass(frozen=True)
class Point:
  """One reported number: an operating point, an AUC, or a context figure.

  `pooled(records)` is the metric over one seed's test units (what the task itself reports);
  `per_unit(records)` gives one value per unit (NaN where undefined) for the paired rank test.
  `compared`: the report tests every pair of arms on it; context figures are only stated.
  `available(records)`: whether one seed's records carry what the point needs (for points
  on optional fields); None = always.
  `by_counts(records)`: optional, a function of how many times each record is drawn (a
  bootstrap resample, `metrics.bootstrap_replicates(by_counts=True)`) giving `pooled` of that
  resample without rebuilding it; the report's bootstrap then runs at array speed.
  """
  key: str
  label: str
  unit: str
  higher_is_better: bool
  pooled: Callable[[Sequence[Record]], float]
  per_unit: Callable[[Sequence[Record]], np.ndarray] | None = None
  compared: bool = True
  available: Callable[[Sequence[Record]], bool] | None = None
  digits: int = 3
  by_counts: Callable[[Sequence[Record]], Callable[[np.ndarray], float]] | None = None


@dataclasses.dataclass(frozen=True)
class Axis:
  """A plot axis: 'log' or 'linear' over [low, high], with its label."""
  scale: str
  low: float
  high: float
  label: str


@dataclasses.dataclass(frozen=True)
class Spec:
  """One application's report declaration (see the module docstring)."""
  name: str
  unit_name: str                       # singular: 'subject', 'video', 'volume'
  test_keys: tuple[str, ...]           # required keys of results['test']
  record_key: str                      # the list in results['test'] holding per-unit data
  record_keys: tuple[str, ...]         # required keys of each item of that list
  units: Callable[[Mapping], dict[str, Record]]
  points: Callable[[Mapping], tuple[Point, ...]]
  primary: Callable[[Mapping], str]    # key of the point that names the best arm
  per_unit_rule: str                   # the per-unit value of the rank test, in words
  plots: tuple[str, ...]               # 'froc', 'roc', 'boxplot' (+ depth, convergence)
  curve_axis: Axis | None = None       # FROC/ROC x axis
  # FROC/ROC: y at each x of `grid` for one seed's records; the x of the operating points;
  # the y label; the point drawn as the curve's ceiling (e.g. candidate recall).
  curve: Callable[[Sequence[Record], np.ndarray], np.ndarray] | None = None
  # Optional: `curve` of a bootstrap resample given as draws per record (see Point.by_counts).
  curve_by_counts: Callable[[Sequence[Record], np.ndarray],
                            Callable[[np.ndarray], np.ndarray]] | None = None
  curve_marks: Callable[[Mapping], Sequence[float]] | None = None
  curve_ylabel: str = ''
  ceiling_key: str = ''
  box_keys: tuple[str, ...] = ()       # per-item values drawn as box plots
  items: Callable[[Sequence[Record], str], np.ndarray] | None = None  # box plot values
  # Optional: a table of counts from one seed's `test`, {'title', 'rows', 'columns', 'counts'
  # ([row][column])}, or None where the test has none; the report sums it over an arm x
  # fraction's seeds (frames with K > 2 classes: the confusion matrix).
  counts: Callable[[Mapping], dict | None] | None = None
  # Optional: the per-unit rule for a given `test`, where it depends on it (frames: K > 2).
  per_unit_rule_of: Callable[[Mapping], str] | None = None
  # Optional: further curves on `curve_axis`, one panel each, for a given `test`: [(title,
  # curve(records, grid))] (frames with K > 2 classes: each class's one-vs-rest ROC).
  panels: Callable[[Mapping], Sequence[tuple[str, Callable[[Sequence[Record], np.ndarray],
                                                           np.ndarray]]]] | None = None


APPS: Registry[Spec] = Registry('application', 'app', 'medft.apps')


def get(name: Any) -> Spec:
  """The declaration of application `name` (a ConfigError, a ValueError, naming the known
  ones)."""
  return APPS[name]


def per_unit_rule(spec: Spec, test: Mapping | None) -> str:
  """The rank test's per-unit value in words, for the runs whose `test` is given."""
  if spec.per_unit_rule_of is not None and test:
    return spec.per_unit_rule_of(test)
  return spec.per_unit_rule


def missing_keys(spec: Spec, test: Any) -> list[str]:
  """The schema keys `test` (a results.json `test` dict) lacks, as dotted names."""
  if not isinstance(test, dict):
    return ['test (a dict)']
  missing = [k for k in spec.test_keys if k not in test]
  records = test.get(spec.record_key)
  if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
    return missing + [f'test.{spec.record_key} (a list of dicts)']
  for r in records:
    missing += [f'test.{spec.record_key}[].{k}' for k in spec.record_keys if k not in r]
  return sorted(set(missing))


def by_unit(records: Sequence[Mapping], unit_key: str = 'unit') -> dict[str, list[Mapping]]:
  """unit name -> its records, in order."""
  out: dict[str, list[Mapping]] = {}
  for r in records:
    out.setdefault(str(r[unit_key]), []).append(r)
  return out


def auc_point(label: str, labelled: Callable[[Mapping], tuple[Any, Any]]) -> Point:
  """ROC AUC over the pooled units; per unit, the mean placement of its positives among all
  pooled negatives (`metrics.auc_placements`: these average to the pooled AUC; NaN for a
  unit without positives). `labelled(record)` gives one unit's (labels, scores)."""
  from medft import metrics

  def split(records):
    pairs = [labelled(r) for r in records]
    labels = [np.asarray(lab, dtype=np.int64).ravel() for lab, _ in pairs]
    scores = [np.asarray(s, dtype=np.float64).ravel() for _, s in pairs]
    return labels, scores

  def pooled(records):
    labels, scores = split(records)
    return metrics.roc_auc(np.concatenate(labels), np.concatenate(scores))

  def per_unit(records):
    labels, scores = split(records)
    placements = metrics.auc_placements(np.concatenate(labels), np.concatenate(scores))
    counts = [int(lab.sum()) for lab in labels]
    edges = np.r_[0, np.cumsum(counts)]
    return np.asarray([placements[a:b].mean() if b > a else np.nan
                       for a, b in zip(edges[:-1], edges[1:])])

  def by_counts(records):
    return metrics.roc_auc_by_counts(*split(records))

  return Point('auc', label, '', True, pooled, per_unit, by_counts=by_counts)
