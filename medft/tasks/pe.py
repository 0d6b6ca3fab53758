"""Pulmonary embolism detection: classify clot candidates of CT volumes (Tajbakhsh et al. 2016).

Candidates are filling defects: blobs of soft-tissue density (`defect_hu`) inside or next to
contrast-filled vessels (`vessel_hu`), restricted to the lungs and their hilum, grouped into
connected components.
A candidate hits the clot (reference label) under its point, or the clot that holds most of
its voxels. Each candidate becomes a vessel-aligned image: the vessel axis is the direction
of least change of the structure tensor of the filled vessel mask, and the patch holds a
cross-section (channel 0) and a longitudinal cut along the axis (channels 1 and 2), resampled
in millimetres with the voxel spacing. Views: 3 widths (10, 15, 20 mm), 3 shifts along the
vessel and 6 rotations about it; test scores average all views. Metric: FROC (sensitivity vs
false positives per volume, a clot counts as detected once), compared at 1-5 FP/volume, and
candidate ROC AUC, with 95% bootstrap intervals over volumes (patients).

Only a cube around each candidate is kept in memory, never the volumes or the patches.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from medft.errors import InputFileError
from medft.tasks import TASKS, detection, device_views

_FULL = ndimage.generate_binary_structure(3, 3)


# ---- geometry ----------------------------------------------------------------------------


def vessel_axis(image: np.ndarray, spacing: Sequence[float], point: Sequence[float],
                derivative_sigma_mm: float = 1.0, window_sigma_mm: float = 3.0) -> np.ndarray:
  """Unit direction (z, y, x, in mm) of least intensity change around `point` (voxel coords).

  The structure tensor sum w * grad grad^T (gradients in HU/mm after Gaussian smoothing,
  weights a Gaussian window in mm about `point`) has its two large eigenvalues across a tube
  and the smallest along it, so its last eigenvector is the local vessel axis.
  """
  spacing = np.asarray(spacing, np.float64)
  smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), derivative_sigma_mm / spacing)
  grads = np.gradient(smooth, *spacing)
  grid = np.indices(image.shape, dtype=np.float64)
  dist2 = sum(((g - p) * s) ** 2 for g, p, s in zip(grid, point, spacing))
  weights = np.exp(-dist2 / (2 * window_sigma_mm ** 2))
  tensor = np.array([[np.sum(weights * gi * gj) for gj in grads] for gi in grads])
  _, vectors = np.linalg.eigh(tensor)
  axis = vectors[:, 0]
  return axis * np.sign(axis[np.argmax(np.abs(axis))])  # a fixed sign for reproducibility


def perpendicular_basis(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Two unit vectors orthogonal to `axis` and to each other (deterministic)."""
  axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
  helper = np.eye(3)[np.argmin(np.abs(axis))]
  u = np.cross(axis, helper)
  u /= np.linalg.norm(u)
  return u, np.cross(axis, u)


def to_uint8(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
  lo, hi = window
  return np.clip(np.rint((np.asarray(hu, np.float64) - lo) * (255.0 / (hi - lo))), 0,
                 255).astype(np.uint8)


def vessel_cut(cube: np.ndarray, spacing: Sequence[float], centre: Sequence[float],
               axis: np.ndarray, width_mm: float, size: int, shift_mm: float = 0.0,
               angle: float = 0.0, window: Sequence[float] = (-250.0, 450.0)) -> np.ndarray:
  """(size, size, 3) uint8: cross-section, longitudinal cut, longitudinal cut again.

  Both planes pass through `centre` (voxel coords of `cube`) moved `shift_mm` along `axis`
  and are `width_mm` wide, rotated by `angle` about the axis. In the longitudinal cut the
  rows run along the axis, the columns along the rotated normal; the centre is the continuous
  patch centre `(size - 1) / 2`.
  """
  spacing = np.asarray(spacing, np.float64)
  axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
  u, v = perpendicular_basis(axis)
  u, v = np.cos(angle) * u + np.sin(angle) * v, -np.sin(angle) * u + np.cos(angle) * v
  offsets = (np.arange(size) - (size - 1) / 2.0) * (width_mm / size)
  rows, cols = np.meshgrid(offsets, offsets, indexing='ij')
  origin = np.asarray(centre, np.float64) + shift_mm * axis / spacing
  cube = np.asarray(cube, np.float32)
  planes = []
  for row_dir, col_dir in ((u, v), (axis, u)):
    mm = rows[None] * row_dir[:, None, None] + cols[None] * col_dir[:, None, None]
    coords = origin[:, None, None] + mm / spacing[:, None, None]
    planes.append(ndimage.map_coordinates(cube, coords, order=1, mode='nearest'))
  cross, longitudinal = (to_uint8(p, window) for p in planes)
  return np.stack([cross, longitudinal, longitudinal], axis=-1)


@dataclasses.dataclass(frozen=True)
class View:
  """One augmentation of a PE candidate."""
  width_mm: float
  shift_mm: float
  angle: float


def pe_views(widths_mm: Sequence[float], shifts_mm: Sequence[float], rotations: int) -> list[View]:
  angles = [2 * np.pi * k / rotations for k in range(rotations)]
  return [View(float(w), float(s), float(a))
          for w, s, a in itertools.product(widths_mm, shifts_mm, angles)]


# ---- candidates --------------------------------------------------------------------------


_CROSS = np.zeros((1, 3, 3), bool)
_CROSS[0, 1, :] = _CROSS[0, :, 1] = True
_SQUARE = np.ones((1, 3, 3), bool)
_LINE_Z = np.ones((3, 1, 1), bool)
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def dilate(mask: np.ndarray, radius_mm: float, spacing: Sequence[float], erode: bool = False,
           round_shape: bool = True) -> np.ndarray:
  """Dilation (or erosion) by a cylinder of radius and half-height `radius_mm`.

  In-plane the disc is an octagon (4- and 8-neighbour steps in turn; the first step reaches
  only the 4 neighbours, like a ball of less than a diagonal), or a square when not
  `round_shape`; along z, whole slices. Steps per axis are floor(radius / spacing), so a
  radius below the voxel size leaves that axis alone. Small structuring elements keep this
  fast on whole CT volumes (an exact Euclidean ball through a distance map is ~10x slower).
  Erosion treats the outside of the array as foreground, so nothing erodes from the edges.
  """
  spacing = np.asarray(spacing, np.float64)
  steps_xy = int(np.floor(radius_mm / min(spacing[1:]) + 1e-9))
  steps_z = int(np.floor(radius_mm / spacing[0] + 1e-9))
  op = ndimage.binary_erosion if erode else ndimage.binary_dilation
  kw = {'border_value': 1} if erode else {}
  out = mask
  if round_shape:
    for k in range(steps_xy):
      out = op(out, _CROSS if k % 2 == 0 else _SQUARE, **kw)
  elif steps_xy:
    out = op(out, _SQUARE, iterations=steps_xy, **kw)
  if steps_z:
    out = op(out, _LINE_Z, iterations=steps_z, **kw)
  return out


def lung_mask(volume: np.ndarray, cfg: Any) -> np.ndarray:
  """Lungs with the vessels inside them: air-density components that do not touch the
  in-plane border (the air around the patient), holes filled slice by slice."""
  air = volume < cfg.lung_hu
  lungs = air & ~np.isin(*_touching_border(air))
  # Holes per slice, all slices in one labelling (no connectivity across slices).
  return lungs | ~np.isin(*_touching_border(~lungs, _IN_PLANE))


def _touching_border(mask: np.ndarray, structure: np.ndarray | None = None):
  """(component map of `mask`, ids of the components touching the in-plane border, and 0)."""
  comps, _ = ndimage.label(mask, structure=structure)
  border = np.concatenate([comps[:, 0].ravel(), comps[:, -1].ravel(), comps[:, :, 0].ravel(),
                           comps[:, :, -1].ravel(), [0]])
  return comps, np.unique(border)


@dataclasses.dataclass
class CandidateMaps:
  """Candidates of one volume; the maps cover the volume region `box` (a tuple of slices)."""
  points: np.ndarray     # (K, 3) voxel indices in the whole volume
  components: np.ndarray  # int32 map of `box`: component k + 1 is candidate k
  filled: np.ndarray     # bool map of `box`: vessels and defects, closed (for the axis)
  box: tuple[slice, slice, slice]


def find_candidates(volume: np.ndarray, spacing: Sequence[float], cfg: Any) -> CandidateMaps:
  """Filling-defect candidates of one volume.

  Defect voxels: smoothed HU in `defect_hu`, not vessel, within `adjacent_mm` of a vessel
  (inside its lumen or next to it, which keeps occlusive clots that break the vessel mask),
  after an opening by `open_mm` that removes the thin partial-volume shell around every
  vessel. With `lungs_only` the work is done on the lungs' bounding box, and vessels must lie
  within `hilum_mm` of the lungs. Components are ordered by size (largest first) and capped at
  `max_candidates`. A candidate's point is the voxel of its component nearest the component's
  centroid (inside it even when the shape is curved). The filled vessel (vessels and defects,
  closed by `closing_mm`) is where the vessel axis is measured.
  """
  spacing = np.asarray(spacing, np.float64)
  box = tuple(slice(0, n) for n in volume.shape)
  lungs = None
  if cfg.lungs_only:
    lungs = lung_mask(volume, cfg)
    found = ndimage.find_objects(lungs.astype(np.uint8))
    if not found:
      empty = np.zeros((0,) * 3, np.int32)
      return CandidateMaps(np.zeros((0, 3), np.int64), empty, empty.astype(bool), box)
    margin = np.ceil((cfg.hilum_mm + cfg.adjacent_mm + 3 * cfg.smooth_mm) / spacing).astype(int)
    box = tuple(slice(max(0, s.start - m), min(n, s.stop + m))
                for s, m, n in zip(found[0], margin, volume.shape))
    lungs = dilate(lungs[box], cfg.hilum_mm, spacing, round_shape=False)
  smooth = ndimage.gaussian_filter(np.asarray(volume[box], np.float32), cfg.smooth_mm / spacing)
  vessel = smooth > cfg.vessel_hu
  if lungs is not None:
    vessel &= lungs
  lo, hi = cfg.defect_hu
  defect = (smooth >= lo) & (smooth <= hi) & ~vessel & dilate(vessel, cfg.adjacent_mm, spacing)
  if cfg.open_mm > 0:
    defect = dilate(dilate(defect, cfg.open_mm, spacing, erode=True), cfg.open_mm, spacing)
  filled = dilate(dilate(vessel | defect, cfg.closing_mm, spacing), cfg.closing_mm, spacing,
                  erode=True)
  comps, n = ndimage.label(defect, structure=_FULL)
  sizes = np.bincount(comps.ravel(), minlength=n + 1)[1:] * float(np.prod(spacing))
  order = [k for k in np.argsort(-sizes, kind='stable') if sizes[k] >= cfg.min_volume_mm3]
  order = order[:cfg.max_candidates]
  relabel = np.zeros(n + 1, np.int32)
  relabel[np.asarray(order, np.int64) + 1] = np.arange(1, len(order) + 1)
  comps = relabel[comps]
  offset = np.array([s.start for s in box])
  points = []
  for k, sl in enumerate(ndimage.find_objects(comps, max_label=len(order))):
    voxels = np.argwhere(comps[sl] == k + 1) + [s.start for s in sl]
    centroid = voxels.mean(axis=0)
    points.append(voxels[np.argmin((((voxels - centroid) * spacing) ** 2).sum(axis=1))] + offset)
  return CandidateMaps(np.asarray(points, np.int64).reshape(-1, 3), comps, filled, box)


def label_candidates(labels: np.ndarray, comps: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Clot id per candidate: the clot under its point, else the clot holding at least half of
  its component's voxels, else -1 (false positive)."""
  out = np.full(len(points), -1, np.int64)
  boxes = ndimage.find_objects(comps, max_label=len(points))
  for k, p in enumerate(points):
    at_point = int(labels[tuple(p)])
    if at_point > 0:
      out[k] = at_point
      continue
    inside = labels[boxes[k]][comps[boxes[k]] == k + 1]
    hits = np.bincount(inside[inside > 0]) if (inside > 0).any() else np.zeros(1)
    if hits.max() * 2 >= inside.size:
      out[k] = int(hits.argmax())
  return out


@dataclasses.dataclass
class Candidate:
  cube: np.ndarray       # int16 HU around the candidate
  centre: np.ndarray     # (3,) voxel coords of the candidate in `cube`
  axis: np.ndarray       # (3,) unit vessel direction (z, y, x) in mm
  lesion: int            # clot id, or -1


@dataclasses.dataclass
class Volume:
  """One CT volume's candidates; `lesions` numbers the clot each hits 1..num_lesions (the
  clots in increasing order of their reference label), or -1."""
  id: str
  unit: str
  spacing: np.ndarray
  candidates: list[Candidate]
  num_lesions: int
  lesions: np.ndarray

  @classmethod
  def from_example(cls, ex: dict, cfg: Any) -> 'Volume':
    volume, labels = np.asarray(ex['volume']), np.asarray(ex['labels'])
    spacing = np.asarray(ex['spacing'], np.float64)
    if volume.shape != labels.shape:
      raise InputFileError(f'PE volume {ex.get("id")}: volume {volume.shape} and labels '
                           f'{labels.shape} differ in shape.')
    found = find_candidates(volume, spacing, cfg)
    offset = np.array([b.start for b in found.box])
    lesions = label_candidates(labels[found.box], found.components, found.points - offset)
    reach = max(cfg.widths_mm) / 2 * np.sqrt(2) + max(np.abs(cfg.shifts_mm))
    half = np.ceil(reach / spacing).astype(int) + 2
    axis_half = np.ceil(3 * cfg.axis_window_mm / spacing).astype(int) + 1
    candidates = []
    for p, lesion in zip(found.points, lesions):
      lo = np.maximum(p - half, 0)
      cube = volume[tuple(slice(a, b) for a, b in zip(lo, p + half + 1))]
      q = p - offset
      alo = np.maximum(q - axis_half, 0)
      local = found.filled[tuple(slice(a, b) for a, b in zip(alo, q + axis_half + 1))]
      axis = vessel_axis(local, spacing, q - alo, cfg.axis_derivative_mm, cfg.axis_window_mm)
      candidates.append(Candidate(cube=np.array(cube, np.int16), centre=(p - lo).astype(float),
                                  axis=axis, lesion=int(lesion)))
    clots = np.unique(labels[labels > 0])
    return cls(id=str(ex.get('id', '')), unit=str(ex.get('unit', ex.get('id', ''))),
               spacing=spacing, candidates=candidates, num_lesions=int(clots.size),
               lesions=np.where(lesions >= 0, np.searchsorted(clots, lesions) + 1, -1))


# ---- task --------------------------------------------------------------------------------


@TASKS.register('pe')
class PeTask(detection.CandidateTask):
  """Clot candidates of CT volumes: vessel-aligned views, FROC in false positives per volume."""
  app = 'pe'
  per = 'volume'

  @property
  def volumes(self) -> dict[str, list[Volume]]:
    return self.items

  def make_views(self, cfg: Any) -> list[View]:
    return pe_views(cfg.widths_mm, cfg.shifts_mm, cfg.rotations)

  def make_item(self, example: dict) -> Volume:
    return Volume.from_example(example, self.cfg)

  def item_pool(self, volumes: Sequence[Volume], train: bool = False):
    """(volume index, candidate index, 0/1 label) of every candidate of `volumes`."""
    none = [np.zeros(0, int)]
    item = np.concatenate([np.full(len(v.lesions), k) for k, v in enumerate(volumes)] + none)
    index = np.concatenate([np.arange(len(v.lesions)) for v in volumes] + none)
    lesions = np.concatenate([v.lesions for v in volumes] + none)
    return item, index, (lesions >= 0).astype(int)

  def no_hit_message(self, split: str) -> str:
    return (f'No {split} candidate hits a clot; check task.vessel_hu, task.defect_hu and '
            'task.closing_mm against the volumes.')

  def cut(self, volume: Volume, index: int, view: View) -> np.ndarray:
    c = volume.candidates[index]
    return vessel_cut(c.cube, volume.spacing, c.centre, c.axis, view.width_mm,
                      self.cfg.patch_size, view.shift_mm, view.angle, self.cfg.hu_window)

  @property
  def eval_view(self) -> View:
    widths = sorted(self.cfg.widths_mm)
    return View(widths[len(widths) // 2], 0.0, 0.0)  # the middle width, unshifted

  def candidate_patches(self, volume: Volume, index: int) -> np.ndarray:
    return np.stack([self.cut(volume, index, v) for v in self.views])

  def summary_rates(self) -> Sequence[float]:
    return self.cfg.fp_rates  # the paper's comparison: mean sensitivity at 1..5 FP/volume

  def view_source(self, volumes: Sequence[Volume]) -> device_views.Source | None:
    cubes = [c.cube for v in volumes for c in v.candidates]
    if not device_views.fits(sum(c.nbytes for c in cubes)):
      return None
    stack, limits = device_views.stack_items(cubes, np.int16)
    if not device_views.fits(stack.nbytes):
      return None
    return device_views.Source('vessel', stack, limits, self.cfg.patch_size,
                               tuple(self.cfg.hu_window))

  def descriptors(self, volumes: Sequence[Volume], rows: tuple, views: Sequence[View]
                  ) -> dict[str, np.ndarray]:
    """Rows (volume index, candidate index) under `views`: `device_views.vessel_patches`,
    the geometry of `vessel_cut` (same basis, rotation, shift and millimetre steps)."""
    vol, index = (np.asarray(r, np.int64) for r in rows)
    first = np.cumsum([0] + [len(v.candidates) for v in volumes])
    cands = [volumes[k].candidates[i] for k, i in zip(vol, index)]
    n = len(cands)
    spacing = np.array([volumes[k].spacing for k in vol], np.float64).reshape(n, 3)
    axis = np.array([c.axis for c in cands], np.float64).reshape(n, 3)
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    basis = [perpendicular_basis(a) for a in axis]
    u0 = np.array([b[0] for b in basis]).reshape(n, 3)
    v0 = np.array([b[1] for b in basis]).reshape(n, 3)
    angle = np.array([v.angle for v in views], np.float64)[:, None]
    u = np.cos(angle) * u0 + np.sin(angle) * v0
    w = -np.sin(angle) * u0 + np.cos(angle) * v0
    step = (np.array([v.width_mm for v in views], np.float64) / self.cfg.patch_size)[:, None]
    shift = np.array([v.shift_mm for v in views], np.float64)[:, None]
    centre = np.array([c.centre for c in cands], np.float64).reshape(n, 3)
    return {'item': (first[vol] + index).astype(np.int32),
            'origin': (centre + shift * axis / spacing).astype(np.float32),
            'rows': (np.stack([u, axis], axis=1) * (step / spacing)[:, None]).astype(np.float32),
            'cols': (np.stack([w, u], axis=1) * (step / spacing)[:, None]).astype(np.float32)}
