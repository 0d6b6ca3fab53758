"""CIMT (Tajbakhsh et al. 2016, Sec. VII, Table S4): LI, MA and CIMT errors in µm per subject.

results.json `test` (medft.tasks.cimt.CimtTask.evaluate): `auc` (validation-style patch AUC
of the test ROI patches), `per_image` = [{'id', 'unit' (subject), 'li_error_um',
'ma_error_um', 'cimt_error_um', optional 'roi_edge_share'}]. The unit of independence is the
subject: intervals resample subjects, and the rank test pairs per-subject mean errors.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from medft.apps import APPS, Point, Spec, by_unit

ERRORS = (('li_error_um', 'LI error'), ('ma_error_um', 'MA error'),
          ('cimt_error_um', 'CIMT error'))


def _images(records: Sequence[list]) -> list[Mapping]:
  return [image for subject in records for image in subject]


def _error_point(key: str, label: str) -> Point:
  return Point(
      key, label, 'µm', False,
      pooled=lambda records: float(np.mean([i[key] for i in _images(records)])),
      per_unit=lambda records: np.asarray([np.mean([i[key] for i in s]) for s in records]),
      digits=1)


EDGE_SHARE = Point(
    'roi_edge_share', 'share of columns whose boundary touched the ROI edge', '', False,
    pooled=lambda records: float(np.mean([i['roi_edge_share'] for i in _images(records)])),
    compared=False,
    available=lambda records: all('roi_edge_share' in i for i in _images(records)))


def points(test: Mapping) -> tuple[Point, ...]:
  return tuple(_error_point(k, label) for k, label in ERRORS) + (EDGE_SHARE,)


def image_values(units: Sequence[Sequence[list]], key: str) -> np.ndarray:
  """Each test image's `key`, averaged over seeds (images present in every seed)."""
  out = []
  for seeds in units:
    per_seed = [{i['id']: i[key] for i in subject} for subject in seeds]
    for image_id in sorted(set.intersection(*(set(s) for s in per_seed))):
      out.append(float(np.mean([s[image_id] for s in per_seed])))
  return np.asarray(out)


SPEC = APPS.register('cimt', Spec(
    name='cimt', unit_name='subject', test_keys=('auc', 'per_image'), record_key='per_image',
    record_keys=('id', 'unit', 'li_error_um', 'ma_error_um', 'cimt_error_um'),
    units=lambda test: by_unit(test['per_image']), points=points,
    primary=lambda test: 'li_error_um',
    per_unit_rule='the subject\'s mean error over its test images (seed-averaged)',
    plots=('boxplot',), box_keys=('li_error_um', 'ma_error_um'), items=image_values))
