"""CIMT: intima-media boundaries as 3-class pixel classification (Tajbakhsh et al., Sec. IV-D).

Training patches are centred on pixels of the region of interest (ROI) and labelled
lumen-intima (on the LI boundary), media-adventitia (on the MA boundary) or background,
stratified by class, without augmentation (as in the paper). At test time every pixel of the
ROI is classified in large batches, the most probable LI and MA row is taken per column and
smoothed, and the distance to the reference boundary is reported in micrometres.

Boundary smoothing: the paper fits open snakes; we use a robust regularised fit (median
filter, then Gaussian smoothing along the columns), which plays the same role -- removing
isolated per-column outliers and enforcing a smooth curve -- with no tuning of snake energies.
Everything here is numpy: patches come out as uint8 and the network is reached through a
`predict(patches) -> probabilities` function.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from medft import metrics

BACKGROUND, LI, MA = 0, 1, 2
CLASS_NAMES = ('background', 'lumen-intima', 'media-adventitia')

PredictFn = Callable[[np.ndarray], np.ndarray]


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

  def roi_rows(self, margin: int) -> np.ndarray:
    top = int(np.floor(np.nanmin(self.li[self.columns]))) - margin
    bottom = int(np.ceil(np.nanmax(self.ma[self.columns]))) + margin
    return np.arange(max(0, top), min(self.height, bottom + 1))


def sample_positions(scans: Sequence[Scan], n: int, rng: np.random.Generator,
                     boundary_margin: int, roi_margin: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """`n` (scan, row, col, label) draws, stratified: a third each LI, MA, background."""
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
    else:  # background: anywhere in the ROI band, away from both boundaries
      lo, hi = max(0, int(li) - roi_margin), min(s.height - 1, int(ma) + roi_margin)
      allowed = np.arange(lo, hi + 1)
      allowed = allowed[(np.abs(allowed - li) > boundary_margin)
                        & (np.abs(allowed - ma) > boundary_margin)]
      r = int(allowed[rng.integers(len(allowed))]) if len(allowed) else lo
    rows[i], cols[i] = min(max(r, 0), s.height - 1), c
  return scan_idx, rows, cols, labels


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
    self._pool = None  # task.fixed_pool: (scan, row, col, label) of every training patch
    if task_config.get('fixed_pool', False) and 'train' in self.scans:
      self._pool = sample_positions(self.scans['train'], self.epoch_examples,
                                    np.random.default_rng([seed, 3]),
                                    task_config.boundary_margin, task_config.roi_margin)

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
                                    self.cfg.boundary_margin, self.cfg.roi_margin)
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
        _, r, c, y = sample_positions([scan], n, rng, self.cfg.boundary_margin,
                                      self.cfg.roi_margin)
        parts.append((scan.windows[r, c], y, np.full(n, k)))
      self._eval_cache[split] = tuple(np.concatenate(p) for p in zip(*parts))
    return self._eval_cache[split]

  def patch_auc(self, probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean one-vs-rest ROC AUC over the three classes."""
    return float(np.mean([metrics.roc_auc(labels == k, probs[:, k])
                          for k in range(self.num_classes)]))

  def boundaries(self, scan: Scan, predict: PredictFn) -> tuple[np.ndarray, np.ndarray]:
    """Predicted LI and MA rows at every traced column, from dense ROI classification."""
    rows = scan.roi_rows(self.cfg.roi_margin)
    cols = scan.columns[::self.cfg.eval_col_stride]
    rr, cc = np.meshgrid(rows, cols, indexing='ij')
    probs = predict(scan.windows[rr.ravel(), cc.ravel()]).reshape(len(rows), len(cols), -1)
    out = []
    for k in (LI, MA):
      best = rows[np.argmax(probs[:, :, k], axis=0)].astype(np.float64)
      w = max(1, min(self.cfg.smooth_window, len(best)) // 2 * 2 - 1)
      smooth = ndimage.gaussian_filter1d(ndimage.median_filter(best, w, mode='nearest'),
                                         sigma=max(w / 4, 1e-3), mode='nearest')
      out.append(np.interp(scan.columns, cols, smooth))
    return out[0], out[1]

  def evaluate(self, predict: PredictFn, split: str = 'test', n_boot: int = 1000) -> dict:
    """The paper's CIMT metrics with 95% bootstrap intervals over subjects."""
    per_image = []
    for scan in self.scans[split]:
      li, ma = self.boundaries(scan, predict)
      ref_li, ref_ma = scan.li[scan.columns], scan.ma[scan.columns]
      per_image.append({
          'id': scan.id, 'unit': scan.unit,
          'li_error_um': metrics.boundary_error_um(li, ref_li, scan.cf),
          'ma_error_um': metrics.boundary_error_um(ma, ref_ma, scan.cf),
          'cimt_error_um': metrics.cimt_error_um(li, ma, ref_li, ref_ma, scan.cf),
      })
    patches, labels, _ = self.eval_patches(split)
    result = {'auc': self.patch_auc(predict(patches), labels), 'per_image': per_image}
    units = sorted({p['unit'] for p in per_image})
    by_unit = [[p for p in per_image if p['unit'] == u] for u in units]
    for key in ('li_error_um', 'ma_error_um', 'cimt_error_um'):
      values = [p[key] for p in per_image]
      result[key] = metrics.mean_sd(values)
      result[key]['ci95'] = metrics.bootstrap_ci(
          lambda us, key=key: float(np.mean([p[key] for u in us for p in u])), by_unit,
          n_boot=n_boot, seed=self.seed)
    return result
