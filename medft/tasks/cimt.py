"""CIMT: intima-media boundaries as 3-class pixel classification (Tajbakhsh et al., Sec. IV-D).

Training patches are centred on pixels of the region of interest (ROI) and labelled
lumen-intima (on the LI boundary), media-adventitia (on the MA boundary) or background,
stratified by class, without augmentation (as in the paper). At test time every pixel of the
ROI is classified in large batches, the most probable LI and MA row is taken per column and
smoothed, and the distance to the reference boundary is reported in micrometres.

The ROI is a rectangle placed as a sonographer places one: `task.roi_height_mm` tall, centred
on the wall's overall position (the median over columns of the midpoint between the reference
LI and MA), over the traced columns; or, with `task.roi_file`, the user's own rows per image.
It never follows the reference column by column, so a wrong prediction can be as wrong as the
box allows (e.g. 3 mm above or below the wall with the default 6 mm box), and each image
records `roi_edge_share`, the share of evaluated columns whose raw LI or MA row lies on the
ROI's top or bottom row: a high share means the box, not the network, bounded the answer.
Training and validation patches come from the same kind of box around their own reference.

ROI file (`task.roi_file`): a CSV with the header `id,top,bottom` and one line per image, the
first and last ROI row (0-based pixel rows of the image as stored, inclusive), e.g.
`clin_0001_L,212,318`. Every image evaluated must have a line.

Boundary smoothing: the paper fits open snakes; we use a robust regularised fit (median
filter, then Gaussian smoothing along the columns), which plays the same role -- removing
isolated per-column outliers and enforcing a smooth curve -- with no tuning of snake energies.
Everything here is numpy: patches come out as uint8 and the network is reached through a
`predict(patches) -> probabilities` function.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from medft import errors, metrics
from medft.tasks import TASKS
from medft.tasks.base import PredictFn

BACKGROUND, LI, MA = 0, 1, 2
CLASS_NAMES = ('background', 'lumen-intima', 'media-adventitia')


def rows_per_column(polyline: np.ndarray, width: int) -> np.ndarray:
  """Boundary row at every integer column 0..width-1 (NaN outside the traced span)."""
  polyline = np.asarray(polyline, np.float64).reshape(-1, 2)
  order = np.argsort(polyline[:, 0], kind='stable')
  x, y = polyline[order, 0], polyline[order, 1]
  cols = np.arange(width, dtype=np.float64)
  rows = np.interp(cols, x, y)
  rows[(cols < x.min()) | (cols > x.max())] = np.nan
  return rows


@dataclasses.dataclass
class Scan:
  """One ultrasound image prepared for patch cutting."""
  id: str
  unit: str
  cf: float                 # mm per pixel
  li: np.ndarray            # (W,) reference LI row per column, NaN where not traced
  ma: np.ndarray
  columns: np.ndarray       # columns where both boundaries are traced
  windows: np.ndarray       # (H, W, P, P) view: windows[r, c] is the patch centred on (r, c)
  height: int

  @classmethod
  def from_example(cls, ex: dict, patch_size: int) -> 'Scan':
    image = np.asarray(ex['image'])
    if image.ndim == 3:
      image = image.mean(axis=-1).astype(np.uint8)
    h, w = image.shape
    li, ma = rows_per_column(ex['li'], w), rows_per_column(ex['ma'], w)
    columns = np.flatnonzero(~np.isnan(li) & ~np.isnan(ma))
    if not len(columns):
      raise ValueError(f'CIMT image {ex.get("id")}: LI and MA profiles share no column.')
    half = patch_size // 2
    padded = np.pad(image, ((half, patch_size - half - 1),) * 2, mode='reflect')
    windows = np.lib.stride_tricks.sliding_window_view(padded, (patch_size, patch_size))
    return cls(id=str(ex.get('id', '')), unit=str(ex.get('unit', ex.get('id', ''))),
               cf=float(ex['cf']), li=li, ma=ma, columns=columns, windows=windows, height=h)

  def roi_rows(self, height_mm: float) -> np.ndarray:
    """Rows of a `height_mm` box centred on the wall's overall position (see the docstring).

    One centre row for the whole image: the median over traced columns of the LI-MA midpoint,
    what a sonographer's ROI box on the far wall gives; no per-column row enters.
    """
    centre = float(np.median((self.li[self.columns] + self.ma[self.columns]) / 2))
    half = height_mm / self.cf / 2
    top, bottom = int(np.floor(centre - half)), int(np.ceil(centre + half))
    return np.arange(max(0, top), min(self.height, bottom + 1))


def read_roi_file(path: str | Path) -> dict[str, tuple[int, int]]:
  """`id,top,bottom` lines (see the module docstring) -> {id: (top, bottom)}."""
  path = Path(path).expanduser()
  if not path.is_file():
    raise errors.MissingInputError(f'task.roi_file={str(path)!r} does not exist; give a CSV '
                                   'with the header id,top,bottom (one line per image).')
  rois = {}
  with path.open(newline='') as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or not {'id', 'top', 'bottom'} <= set(reader.fieldnames):
      raise errors.InputFileError(f'{path}: the header must name id,top,bottom; found '
                                  f'{reader.fieldnames}.')
    for line, row in enumerate(reader, start=2):
      try:
        top, bottom = int(row['top']), int(row['bottom'])
      except (TypeError, ValueError):
        raise errors.InputFileError(f'{path} line {line}: top={row["top"]!r}, '
                                    f'bottom={row["bottom"]!r} must be integer rows.') from None
      if not 0 <= top <= bottom:
        raise errors.InputFileError(f'{path} line {line}: need 0 <= top <= bottom, got '
                                    f'top={top}, bottom={bottom}.')
      rois[row['id'].strip()] = (top, bottom)
  return rois


def sample_positions(scans: Sequence[Scan], n: int, rng: np.random.Generator,
                     boundary_margin: int, roi: Callable[[Scan], np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """`n` (scan, row, col, label) draws, stratified: a third each LI, MA, background.

  Background rows are drawn from `roi(scan)`, the rows the test classifies, away from both
  reference boundaries at that column (training data may use the reference).
  """
  labels = np.arange(n) % 3
  rng.shuffle(labels)
  scan_idx = rng.integers(len(scans), size=n)
  rows = np.empty(n, np.int64)
  cols = np.empty(n, np.int64)
  for i in range(n):
    s = scans[scan_idx[i]]
    c = s.columns[rng.integers(len(s.columns))]
    li, ma = s.li[c], s.ma[c]
    if labels[i] == LI:
      r = int(np.rint(li))
    elif labels[i] == MA:
      r = int(np.rint(ma))
    else:  # background: anywhere in the ROI, away from both boundaries
      box = roi(s)
      allowed = box[(np.abs(box - li) > boundary_margin) & (np.abs(box - ma) > boundary_margin)]
      r = int(allowed[rng.integers(len(allowed))]) if len(allowed) else int(box[0])
    rows[i], cols[i] = min(max(r, 0), s.height - 1), c
  return scan_idx, rows, cols, labels


@TASKS.register('cimt')
class CimtTask:
  """Patch sampling and evaluation for the CIMT application."""
  app = 'cimt'
  num_classes = 3

  def __init__(self, splits: dict[str, Sequence[dict]], task_config: Any, seed: int):
    self.cfg = task_config
    self.seed = seed
    self.scans = {name: [Scan.from_example(src[i], task_config.patch_size)
                         for i in range(len(src))] for name, src in splits.items()}
    self._eval_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    roi_file = task_config.get('roi_file', '')
    self._roi_file = read_roi_file(roi_file) if roi_file else None
    if self._roi_file is None and not task_config.roi_height_mm > 0:
      raise errors.ConfigError(f'task.roi_height_mm={task_config.roi_height_mm} must be above 0 '
                               '(height of the ROI box in mm, e.g. 6), or set task.roi_file.')
    for scan in (s for scans in self.scans.values() for s in scans):
      self.roi_rows(scan)  # a missing or bad ROI line fails here, before any training
    self._pool = None  # task.fixed_pool: (scan, row, col, label) of every training patch
    if task_config.get('fixed_pool', False) and 'train' in self.scans:
      self._pool = sample_positions(self.scans['train'], self.epoch_examples,
                                    np.random.default_rng([seed, 3]),
                                    task_config.boundary_margin, self.roi_rows)

  def roi_rows(self, scan: Scan) -> np.ndarray:
    """The ROI rows of `scan`: its line of `task.roi_file`, else the `roi_height_mm` box."""
    if self._roi_file is None:
      return scan.roi_rows(self.cfg.roi_height_mm)
    if scan.id not in self._roi_file:
      raise errors.InputFileError(f'task.roi_file={self.cfg.roi_file!r} has no line for image '
                                  f'{scan.id!r}; add "{scan.id},<top>,<bottom>".')
    top, bottom = self._roi_file[scan.id]
    if bottom >= scan.height:
      raise errors.InputFileError(f'task.roi_file={self.cfg.roi_file!r}: image {scan.id!r} has '
                                  f'{scan.height} rows, its ROI bottom is {bottom}.')
    return np.arange(top, bottom + 1)

  @property
  def epoch_examples(self) -> int:
    return len(self.scans['train']) * self.cfg.patches_per_image

  def _cut(self, scans: Sequence[Scan], scan_idx, rows, cols) -> np.ndarray:
    return np.stack([scans[s].windows[r, c] for s, r, c in zip(scan_idx, rows, cols)])

  def train_batch(self, step: int, batch: int, host_slice: slice = slice(None)) -> dict:
    """Global batch `step` (a pure function of seed and step); this host's slice of it.

    Positions are fresh stratified draws, or with `task.fixed_pool` draws from one fixed
    stratified set of `epoch_examples` positions.
    """
    rng = np.random.default_rng([self.seed, 1, step])
    if self._pool is not None:
      pick = rng.integers(self.epoch_examples, size=batch)
      s, r, c, y = (a[pick] for a in self._pool)
    else:
      s, r, c, y = sample_positions(self.scans['train'], batch, rng,
                                    self.cfg.boundary_margin, self.roi_rows)
    s, r, c, y = s[host_slice], r[host_slice], c[host_slice], y[host_slice]
    return {'image': self._cut(self.scans['train'], s, r, c), 'label': y.astype(np.int32)}

  def eval_patches(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed stratified patches of a split: (patches, labels, unit index per patch)."""
    if split not in self._eval_cache:
      scans = self.scans[split]
      rng = np.random.default_rng([self.seed, 2, len(split)])
      n = self.cfg.eval_patches_per_class * 3
      parts = []
      for k, scan in enumerate(scans):
        _, r, c, y = sample_positions([scan], n, rng, self.cfg.boundary_margin, self.roi_rows)
        parts.append((scan.windows[r, c], y, np.full(n, k)))
      self._eval_cache[split] = tuple(np.concatenate(p) for p in zip(*parts))
    return self._eval_cache[split]

  def patch_auc(self, probs: np.ndarray, labels: np.ndarray) -> float:
    """The paper's patch AUC: both interfaces against background, one ROC.

    Score p(LI) + p(MA) (= 1 - p(background)), label "not background".
    """
    return metrics.roc_auc(labels != BACKGROUND, probs[:, LI] + probs[:, MA])

  def eval_size(self, split: str) -> int:
    """Patches the test evaluation of `split` predicts (ROI windows, then the patch AUC's)."""
    windows = sum(len(self.roi_rows(scan)) * len(scan.columns[::self.cfg.eval_col_stride])
                  for scan in self.scans.get(split, ()))
    return windows + len(self.eval_patches(split)[0]) if split in self.scans else 0

  def boundaries(self, scan: Scan, predict: PredictFn
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """Predicted LI and MA rows at every traced column, from dense ROI classification, and
    the share of evaluated columns whose raw LI or MA row is on the ROI's top or bottom row."""
    rows = self.roi_rows(scan)
    cols = scan.columns[::self.cfg.eval_col_stride]
    rr, cc = np.meshgrid(rows, cols, indexing='ij')
    probs = predict(scan.windows[rr.ravel(), cc.ravel()]).reshape(len(rows), len(cols), -1)
    out, on_edge = [], np.zeros(len(cols), bool)
    for k in (LI, MA):
      best = rows[np.argmax(probs[:, :, k], axis=0)].astype(np.float64)
      on_edge |= (best == rows[0]) | (best == rows[-1])
      w = max(1, min(self.cfg.smooth_window, len(best)) // 2 * 2 - 1)
      smooth = ndimage.gaussian_filter1d(ndimage.median_filter(best, w, mode='nearest'),
                                         sigma=max(w / 4, 1e-3), mode='nearest')
      out.append(np.interp(scan.columns, cols, smooth))
    return out[0], out[1], float(on_edge.mean())

  def evaluate(self, predict: PredictFn, split: str = 'test', n_boot: int = 1000) -> dict:
    """The paper's CIMT metrics with 95% bootstrap intervals over subjects.

    Also `roi_edge_share` (per image, and its mean over images), `roi_source` ('box' or
    'file') and `roi_height_mm` (None with a file).
    """
    per_image = []
    for scan in self.scans[split]:
      li, ma, edge_share = self.boundaries(scan, predict)
      ref_li, ref_ma = scan.li[scan.columns], scan.ma[scan.columns]
      per_image.append({
          'id': scan.id, 'unit': scan.unit,
          'li_error_um': metrics.boundary_error_um(li, ref_li, scan.cf),
          'ma_error_um': metrics.boundary_error_um(ma, ref_ma, scan.cf),
          'cimt_error_um': metrics.cimt_error_um(li, ma, ref_li, ref_ma, scan.cf),
          'roi_edge_share': edge_share,
      })
    patches, labels, _ = self.eval_patches(split)
    result = {'auc': self.patch_auc(predict(patches), labels), 'per_image': per_image,
              'roi_edge_share': float(np.mean([p['roi_edge_share'] for p in per_image])),
              'roi_source': 'file' if self._roi_file is not None else 'box',
              'roi_height_mm': None if self._roi_file is not None
              else float(self.cfg.roi_height_mm)}
    units = sorted({p['unit'] for p in per_image})
    by_unit = [[p for p in per_image if p['unit'] == u] for u in units]
    for key in ('li_error_um', 'ma_error_um', 'cimt_error_um'):
      values = [p[key] for p in per_image]
      result[key] = metrics.mean_sd(values)
      result[key]['ci95'] = metrics.bootstrap_ci(
          lambda us, key=key: float(np.mean([p[key] for u in us for p in u])), by_unit,
          n_boot=n_boot, seed=self.seed)
    return result
