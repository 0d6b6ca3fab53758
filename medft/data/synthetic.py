"""Small synthetic datasets written in the real on-disk layouts (for tests and the demo).

    python -m medft.data.synthetic --app=cimt --out=/tmp/cubs_twin [--n=24] [--seed=0]

writes a CUBS-like folder that the real `cubs` builder reads; `data.load({'name':
'synthetic_cimt'})` does this into a cache folder and then reads it through that builder.
Apps and their default layouts: cimt -> cubs, polyp -> cvc_clinicdb (or kvasir_seg),
pe -> cad_pe (or fumpe), frames -> frames_folder. The images are made to be learnable: CIMT
has a visible but speckled intima-media band between the written LI and MA profiles, polyps
are textured reddish ellipses matching their masks, PE volumes have bright vessels with dark
filling defects at the labelled voxels, informative frames are sharp and the others blurred,
dark or washed out; with `classes=K` > 2 (`--classes`, config `data.synthetic_classes`) the
frames twin adds K - 2 sharp classes `tinted_<k>`, each with its own colour cast (as dye or
narrow-band light would give), so every class is visible in a crop. Everything is a function of
(app, layout, n, seed, classes).

A written folder carries `.medft_synthetic.json` (app, layout, n, seed, file count). `--out`
must be absent, empty, or such a folder (which is then replaced); any other folder is refused,
so the twin, whose file names follow the real datasets', never writes over a real download.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from medft.errors import ConfigError, NotOursError, ResourceError, UserError

APP_LAYOUTS = {
    'cimt': ('cubs',),
    'polyp': ('cvc_clinicdb', 'kvasir_seg'),
    'pe': ('cad_pe', 'fumpe'),
    'frames': ('frames_folder',),
}
DEFAULT_N = {'cimt': 24, 'polyp': 24, 'pe': 6, 'frames': 40}
# Class map and unit regex of the synthetic frames tree (two classes; `frames_classes(k)`).
FRAMES_CLASSES = {'informative': 1, 'non_informative': 0}
FRAMES_UNIT_REGEX = r'^(vid\d+)_'
CIMT_ANNOTATORS = ('A1', 'A2')
PE_SPACING = (1.5, 0.7, 0.7)  # (z, y, x) mm
# The marker of a folder this module wrote (what lets `write` replace it).
MARKER = '.medft_synthetic.json'


def _rng(seed: int, *keys: int) -> np.random.Generator:
  return np.random.default_rng([seed, *keys])


def _smooth_noise(rng: np.random.Generator, shape, sigma, amplitude=1.0) -> np.ndarray:
  """Gaussian-filtered white noise rescaled to unit standard deviation, times amplitude."""
  field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
  return amplitude * field / (field.std() + 1e-9)


def _to_uint8(values: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# CIMT (CUBS layout)
# ---------------------------------------------------------------------------------------------


def cimt_example(rng: np.random.Generator, height: int = 200, width: int = 256):
  """One ultrasound-like image and its LI/MA boundaries y(x) over all columns (float64)."""
  x = np.arange(width)

  def wave(base, amplitude, period_range):
    period = rng.uniform(*period_range)
    return base + amplitude * np.sin(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi))

  li = wave(rng.uniform(0.40, 0.55) * height, rng.uniform(2, 6), (150, 400))
  li += wave(0.0, rng.uniform(0.5, 1.5), (40, 90))
  thickness = wave(rng.uniform(11, 16), rng.uniform(1, 3), (120, 300))  # stays in 8..19 px
  ma = li + thickness
  rows = np.arange(height)[:, None]

  def step(edge, width_px=1.0):  # 0 above the edge, 1 below, sub-pixel smooth
    return 1.0 / (1.0 + np.exp(-(rows - edge[None, :]) / width_px))

  lumen, band_level = rng.uniform(8, 20), rng.uniform(70, 95)
  adventitia, tissue = rng.uniform(190, 230), rng.uniform(80, 110)
  below_ma = rows - ma[None, :]
  deep = tissue + (adventitia - tissue) * np.exp(-np.clip(below_ma, 0, None) / 5.0)
  deep *= np.exp(-np.clip(below_ma, 0, None) / (2.5 * height))  # attenuation with depth
  image = lumen + (band_level - lumen) * step(li) + (deep - band_level) * step(ma)
  near_wall = np.exp(-rows / 12.0) * rng.uniform(60, 100)  # bright far side of the top wall
  image = image + near_wall
  speckle = ndimage.gaussian_filter(rng.gamma(3.0, 1 / 3.0, (height, width)), (0.7, 1.5))
  image = image * speckle / speckle.mean() + rng.normal(0, 4, (height, width))
  return _to_uint8(image), li, ma


def cimt_examples(n: int, seed: int = 0, height: int = 200, width: int = 256) -> list[dict]:
  """`n` CIMT examples in memory, as the CUBS reader yields them (id, unit, cf, image, li, ma).

  For code that needs a CIMT task without preparing a dataset (the benchmark, the step
  trace): `cimt_example` images with LI/MA traced over every column, one subject each, at
  0.06 mm per pixel. Not the pixels `write_cimt` writes (that twin also draws spans and
  spacings), but the same kind of image.
  """
  out = []
  for i in range(n):
    image, li, ma = cimt_example(_rng(seed, 1, i), height, width)
    cols = np.arange(width, dtype=np.float64)
    out.append({'id': f'synthetic{i}', 'unit': f'subject{i}', 'cf': 0.06, 'image': image,
                'li': np.stack([cols, li], 1), 'ma': np.stack([cols, ma], 1)})
  return out


def _profile_text(points: np.ndarray, style: int) -> str:
  """Writes (x, y) points in one of the layouts found in CUBS copies."""
  if style == 0:  # two rows: x row, y row
    return '\n'.join(' '.join(f'{v:.3f}' for v in row) for row in points.T) + '\n'
  separator = ' ' if style == 1 else ','
  return ''.join(f'{x:.3f}{separator}{y:.3f}\n' for x, y in points)


def write_cimt(out: Path, n: int, seed: int) -> None:
  for sub in ('IMAGES', 'CF', *(f'SEGMENTATIONS/{a}' for a in CIMT_ANNOTATORS)):
    (out / sub).mkdir(parents=True, exist_ok=True)
  for i in range(n):
    rng = _rng(seed, 1, i)
    image_id = f'clin_{i // 2 + 1:04d}_{"LR"[i % 2]}'
    image, li, ma = cimt_example(rng)
    width = image.shape[1]
    start = int(rng.integers(8, 40))
    stop = int(rng.integers(width - 40, width - 8))
    columns = np.arange(start, stop, dtype=np.float64)
    Image.fromarray(image, mode='L').save(out / 'IMAGES' / f'{image_id}.tiff')
    (out / 'CF' / f'{image_id}_CF.txt').write_text(f'{rng.uniform(0.055, 0.065):.5f}\n')
    for a_index, annotator in enumerate(CIMT_ANNOTATORS):
      # Later annotators trace the same boundaries with some hand jitter.
      jitter = 0.0 if a_index == 0 else rng.normal(0, 0.5, (2, columns.size))
      for kind, curve, j in (('LI', li, 0), ('MA', ma, 1)):
        y = curve[start:stop] + (jitter if np.isscalar(jitter) else jitter[j])
        text = _profile_text(np.stack([columns, y], axis=1), style=i % 3)
        (out / 'SEGMENTATIONS' / annotator / f'{image_id}-{kind}.txt').write_text(text)


# ---------------------------------------------------------------------------------------------
# Polyps (CVC-ClinicDB and Kvasir-SEG layouts)
# ---------------------------------------------------------------------------------------------


def _mucosa(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Reddish textured colon wall with a dark lumen, vignetting and specular spots (float RGB)."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
  base = np.array([rng.uniform(160, 200), rng.uniform(70, 100), rng.uniform(60, 90)])
  shade = 1.0 + _smooth_noise(rng, (height, width), 12, 0.12)
  folds = 1.0 + 0.10 * np.sin(
      (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / rng.uniform(6, 14)
      + _smooth_noise(rng, (height, width), 20, 2.0)
  )
  cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
  lumen = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.12 * min(height, width)) ** 2))
  vignette = 1.0 - 0.45 * (((yy - height / 2) / height) ** 2 + ((xx - width / 2) / width) ** 2)
  light = shade * folds * vignette * (1.0 - 0.8 * lumen)
  image = base[None, None, :] * light[..., None]
  image += _smooth_noise(rng, (height, width, 3), (1, 1, 0), 4.0)
  for _ in range(int(rng.integers(2, 6))):  # specular highlights
    sy, sx = rng.uniform(0, height), rng.uniform(0, width)
    spot = np.exp(-((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * rng.uniform(1, 3) ** 2))
    image += 255 * spot[..., None]
  return image


def _add_polyp(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
  """Paints one elliptic, textured, reddish polyp into image and marks it in mask."""
  height, width = mask.shape
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
  ry, rx = rng.uniform(0.06, 0.16) * height, rng.uniform(0.06, 0.16) * width
  cy = rng.uniform(ry + 4, height - ry - 4)
  cx = rng.uniform(rx + 4, width - rx - 4)
  angle = rng.uniform(0, np.pi)
  dy, dx = yy - cy, xx - cx
  u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
  v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
  radius = np.sqrt(u ** 2 + v ** 2)
  theta = np.arctan2(v, u)
  boundary = 1.0 + 0.08 * np.sin(3 * theta + rng.uniform(0, 2 * np.pi))
  inside = radius <= boundary
  dome = np.sqrt(np.clip(1.0 - (radius / boundary) ** 2, 0, 1))  # bulging surface
  lit = 0.75 + 0.45 * dome * (1 + 0.4 * (-u * 0.5 - v * 0.5))
  texture = 1.0 + _smooth_noise(rng, (height, width), 1.5, 0.10)
  colour = np.array([rng.uniform(200, 235), rng.uniform(80, 120), rng.uniform(70, 105)])
  polyp = colour[None, None, :] * (lit * texture)[..., None]
  rim = np.exp(-((radius - boundary) / 0.06) ** 2)[..., None]  # dark shadow at the edge
  image[:] = np.where(inside[..., None], polyp, image * (1 - 0.35 * rim))
  mask |= inside


def polyp_example(rng: np.random.Generator, height: int, width: int, n_polyps: int):
  image = _mucosa(rng, height, width)
  mask = np.zeros((height, width), dtype=bool)
  for _ in range(n_polyps):
    _add_polyp(rng, image, mask)
  return _to_uint8(image), mask.astype(np.uint8)


def _polyp_count(i: int, empty_every: int) -> int:
  """Every `empty_every`-th frame has no polyp; every 7th of the others has two."""
  return 0 if i % empty_every == empty_every - 1 else (2 if i % 7 == 5 else 1)


def cvc_frame_numbers(n: int) -> list[int]:
  """Frame numbers spread over CVC-ClinicDB sequences: 4 consecutive frames per sequence."""
  from medft.data.cvc_clinicdb import LAST_FRAME, SEQUENCE_STARTS

  ends = [*SEQUENCE_STARTS[1:], LAST_FRAME + 1]
  frames, offset = [], 0
  while len(frames) < n:
    for start, end in zip(SEQUENCE_STARTS, ends):
      frames += [f for f in range(start + offset, min(start + offset + 4, end))]
    if offset > LAST_FRAME:
      raise ConfigError(f'CVC-ClinicDB has only {LAST_FRAME} frames; asked for n={n}.')
    offset += 4
  return sorted(frames[:n])


def write_cvc(out: Path, n: int, seed: int) -> None:
  (out / 'Original').mkdir(parents=True, exist_ok=True)
  (out / 'Ground Truth').mkdir(parents=True, exist_ok=True)
  for i, frame in enumerate(cvc_frame_numbers(n)):
    image, mask = polyp_example(_rng(seed, 2, frame), 288, 384, _polyp_count(i, 4))
    Image.fromarray(image, mode='RGB').save(out / 'Original' / f'{frame}.tif')
    Image.fromarray(mask * 255, mode='L').save(out / 'Ground Truth' / f'{frame}.tif')


def write_kvasir(out: Path, n: int, seed: int) -> None:
  from medft.data.masks import boxes_from_mask

  (out / 'images').mkdir(parents=True, exist_ok=True)
  (out / 'masks').mkdir(parents=True, exist_ok=True)
  boxes = {}
  originals = ((529, 622), (1070, 1348), (576, 720), (1024, 1280))
  for i in range(n):
    rng = _rng(seed, 3, i)
    image_id = 'cju' + ''.join(rng.choice(list('0123456789abcdefghijklmnopqrstuvwxyz'), 22))
    image, mask = polyp_example(rng, 256, 256, _polyp_count(i, 8))
    Image.fromarray(image, mode='RGB').save(out / 'images' / f'{image_id}.jpg', quality=90)
    mask_rgb = np.repeat(mask[..., None] * 255, 3, axis=2)
    Image.fromarray(mask_rgb, mode='RGB').save(out / 'masks' / f'{image_id}.jpg', quality=90)
    # The JSON gives boxes in a pretended original resolution, as in the real release.
    height, width = originals[i % len(originals)]
    sy, sx = height / 256, width / 256
    boxes[image_id] = {
        'height': height,
        'width': width,
        'bbox': [
            {'label': 'polyp', 'xmin': int(round(b[1] * sx)), 'ymin': int(round(b[0] * sy)),
             'xmax': int(round(b[3] * sx)), 'ymax': int(round(b[2] * sy))}
            for b in boxes_from_mask(mask)
        ],
    }
  (out / 'kavsir_bboxes.json').write_text(json.dumps(boxes, indent=1))


# ---------------------------------------------------------------------------------------------
# PE (CAD-PE and FUMPE layouts)
# ---------------------------------------------------------------------------------------------


def _tube(shape, points: np.ndarray, radius: float) -> np.ndarray:
  """Boolean mask of spheres of `radius` voxels centred on consecutive points (a tube)."""
  mask = np.zeros(shape, dtype=bool)
  r = int(math.ceil(radius)) + 1
  offsets = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1].reshape(3, -1).T
  ball = offsets[(offsets ** 2).sum(1) <= radius ** 2]
  for point in points:
    voxels = np.rint(point).astype(int)[None, :] + ball
    inside = np.all((voxels >= 0) & (voxels < np.asarray(shape)), axis=1)
    mask[tuple(voxels[inside].T)] = True
  return mask


def pe_example(rng: np.random.Generator, shape=(48, 96, 96)):
  """CT-like volume (int16 HU, (z, y, x)) with vessels and clots, and clot ids (int32)."""
  depth, height, width = shape
  zz, yy, xx = np.mgrid[0:depth, 0:height, 0:width].astype(np.float64)
  body = ((yy - height / 2) / (0.46 * height)) ** 2 + ((xx - width / 2) / (0.48 * width)) ** 2 < 1
  lungs = np.zeros(shape, dtype=bool)
  for side in (-1, 1):
    cx = width / 2 + side * 0.22 * width
    lungs |= ((yy - height / 2) / (0.33 * height)) ** 2 + ((xx - cx) / (0.17 * width)) ** 2 < 1
  volume = np.where(body, 40.0, -1000.0)
  volume = np.where(lungs, -850.0, volume)
  vessels = np.zeros(shape, dtype=bool)
  labels = np.zeros(shape, dtype=np.int32)
  n_vessels = int(rng.integers(4, 7))
  n_clots = int(rng.integers(1, 4))
  steps = np.linspace(0, 1, 80)
  for k in range(n_vessels):
    side = -1 if k % 2 == 0 else 1
    start = np.array([rng.uniform(2, 8), rng.uniform(0.3, 0.7) * height,
                      width / 2 + side * rng.uniform(0.12, 0.3) * width])
    end = np.array([rng.uniform(depth - 8, depth - 2), rng.uniform(0.3, 0.7) * height,
                    width / 2 + side * rng.uniform(0.12, 0.3) * width])
    bend = rng.normal(0, 4, 3) * np.array([0, 1, 1])
    points = (start[None] + steps[:, None] * (end - start)[None]
              + np.sin(np.pi * steps)[:, None] * bend[None])
    radius = rng.uniform(2.0, 3.5)
    vessels |= _tube(shape, points, radius)
    if k < n_clots:  # one clot per vessel, so clots never touch
      first = int(rng.integers(15, 50))
      clot = _tube(shape, points[first:first + int(rng.integers(8, 16))], radius * 0.8)
      labels[clot] = k + 1
  volume = np.where(vessels, 300.0, volume)
  volume = np.where(labels > 0, 40.0, volume)
  volume = ndimage.gaussian_filter(volume, 0.6) + rng.normal(0, 20, shape)
  return np.clip(np.rint(volume), -1024, 3071).astype(np.int16), labels  # scanner range


# A stored layout for the NIfTI twin: stored axes (slowest first) = (x, z, y) of the
# (z, y, x) convention, the first and last reversed, and an origin off zero.
PE_NIFTI_LAYOUT = ((2, 0, 1), (True, False, True))
PE_NIFTI_ORIGIN = (-120.5, 33.0, -410.25)  # LPS mm of canonical voxel (0, 0, 0)


def pe_stored(volume: np.ndarray, spacing=PE_SPACING, layout=((0, 1, 2), (False,) * 3),
              origin=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`volume` ((z, y, x) = superior, posterior, left; see `volume_files`) as some file would
  store it: stored axis a is convention axis layout[0][a], reversed where layout[1][a].
  Returns (stored array, LPS directions (3, 3): column a = one voxel step along stored axis
  a in mm, LPS origin of stored voxel (0, 0, 0)), which reading puts back to `volume`."""
  order, flips = layout
  sz, sy, sx = spacing
  canonical = np.array([[0, 0, sx], [0, sy, 0], [sz, 0, 0]], np.float64)  # columns z, y, x
  stored = np.transpose(volume, order)
  flipped = [a for a, f in enumerate(flips) if f]
  stored = np.flip(stored, flipped) if flipped else stored
  directions = canonical[:, list(order)] * np.where(flips, -1.0, 1.0)
  start = np.asarray(origin, np.float64) + sum(
      canonical[:, order[a]] * (volume.shape[order[a]] - 1) for a in flipped)
  return np.ascontiguousarray(stored), directions, start


def write_nifti(path: Path, stored: np.ndarray, directions: np.ndarray, origin) -> None:
  """A NIfTI-1 file of `stored` (slowest axis first) with the LPS geometry of `pe_stored`."""
  from medft.data.volumes import require

  nib = require('nibabel', 'Writing NIfTI volumes')
  lps = np.eye(4)
  lps[:3, :3], lps[:3, 3] = np.asarray(directions)[:, [2, 1, 0]], origin  # NIfTI: i fastest
  ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
  image = nib.Nifti1Image(np.transpose(stored, (2, 1, 0)), ras)
  image.set_qform(ras, code=1)
  image.set_sform(ras, code=1)
  nib.save(image, str(path))


def write_nrrd(path: Path, stored: np.ndarray, directions: np.ndarray, origin) -> None:
  """An LPS NRRD file of `stored` (slowest axis first) with the geometry of `pe_stored`."""
  from medft.data.volumes import require

  nrrd = require('nrrd', 'Writing NRRD volumes')
  header = {'space': 'left-posterior-superior',
            'space directions': np.asarray(directions)[:, [2, 1, 0]].T,  # rows: fastest first
            'space origin': np.asarray(origin, np.float64)}
  nrrd.write(str(path), stored, header, index_order='C', compression_level=1)


def write_cad_pe(out: Path, n: int, seed: int, form: str = 'nrrd',
                 layout=((0, 1, 2), (False,) * 3), origin=(0.0, 0.0, 0.0)) -> None:
  """The CAD-PE layout; form='nifti' writes .nii.gz files instead of .nrrd, and `layout` /
  `origin` (see `pe_stored`, e.g. PE_NIFTI_LAYOUT) store the volumes in another axis order."""
  write = {'nrrd': write_nrrd, 'nifti': write_nifti}[form]
  suffix = {'nrrd': 'nrrd', 'nifti': 'nii.gz'}[form]
  (out / 'images').mkdir(parents=True, exist_ok=True)
  (out / 'rs').mkdir(parents=True, exist_ok=True)
  for i in range(n):
    volume, labels = pe_example(_rng(seed, 4, i))
    for path, values in ((out / 'images' / f'{i + 1:03d}.{suffix}', volume),
                         (out / 'rs' / f'{i + 1:04d}RefStd.{suffix}', labels.astype(np.int16))):
      write(path, *pe_stored(values, PE_SPACING, layout, origin))


def write_dicom_series(folder: Path, volume: np.ndarray, names: list[str], z0: float,
                       spacing=PE_SPACING, orientation=(1, 0, 0, 0, 1, 0),
                       positions: np.ndarray | None = None, series: str | None = None) -> None:
  """Writes volume slice k (physical order, ascending z) to folder/names[k] as CT DICOM.

  Axial slices at z0 + k * spacing[0] by default; `orientation` (ImageOrientationPatient) and
  `positions` ((n, 3) ImagePositionPatient in physical order) write oblique series instead, and
  `series` sets the SeriesInstanceUID.
  """
  from medft.data.volumes import require

  pydicom = require('pydicom', 'Writing the synthetic FUMPE twin')
  from pydicom.dataset import FileMetaDataset
  from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

  folder.mkdir(parents=True, exist_ok=True)
  entropy = [str(folder.name)] if series is None else [series]
  series = series or generate_uid(entropy_srcs=[str(folder.name), 'series'])
  for k, name in enumerate(names):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[*entropy, str(k)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series
    ds.Modality = 'CT'
    ds.PatientID = folder.name
    ds.Rows, ds.Columns = volume.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = 'MONOCHROME2'
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0  # unsigned values + intercept, as scanners usually store CT
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelSpacing = [spacing[1], spacing[2]]
    ds.SliceThickness = spacing[0]
    ds.ImagePositionPatient = ([0.0, 0.0, z0 + k * spacing[0]] if positions is None
                               else [float(v) for v in positions[k]])
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.InstanceNumber = k + 1
    ds.PixelData = (volume[k].astype(np.int32) + 1024).clip(0, 65535).astype('<u2').tobytes()
    try:
      pydicom.dcmwrite(str(folder / name), ds, enforce_file_format=True)
    except TypeError:  # pydicom < 3
      pydicom.dcmwrite(str(folder / name), ds, write_like_original=False)


def write_fumpe(out: Path, n: int, seed: int) -> None:
  from scipy import io as sio

  (out / 'GroundTruth').mkdir(parents=True, exist_ok=True)
  for i in range(n):
    rng = _rng(seed, 5, i)
    volume, labels = pe_example(rng)
    patient = f'PAT{i + 1:03d}'
    # File names in an order unrelated to position, so the mask's file order must be undone.
    shuffled = rng.permutation(volume.shape[0])
    names = [f'D{s + 1:04d}.dcm' for s in shuffled]
    write_dicom_series(out / 'CT_scans' / patient, volume, names, z0=float(rng.uniform(-200, 0)))
    file_order = np.argsort(names)  # the slice stored in each file, in file-name order
    mask_yxz = np.transpose((labels > 0).astype(np.uint8)[file_order], (1, 2, 0))
    sio.savemat(str(out / 'GroundTruth' / f'{patient}.mat'), {'Mask': mask_yxz},
                do_compression=True)


# ---------------------------------------------------------------------------------------------
# Frames (folder-per-class layout)
# ---------------------------------------------------------------------------------------------


def frame_example(rng: np.random.Generator, informative: bool, size: int = 128) -> np.ndarray:
  image = _mucosa(rng, size, size)
  if informative:
    image += _smooth_noise(rng, (size, size, 1), 0.7, 10.0)  # sharp fine texture
    if rng.uniform() < 0.5:
      mask = np.zeros((size, size), dtype=bool)
      _add_polyp(rng, image, mask)
    return _to_uint8(image)
  kind = int(rng.integers(3))
  if kind == 0:  # motion/defocus blur
    image = ndimage.gaussian_filter(image, (rng.uniform(3, 6), rng.uniform(3, 6), 0))
  elif kind == 1:  # too dark
    image = ndimage.gaussian_filter(image, (1.5, 1.5, 0)) * rng.uniform(0.12, 0.3)
  else:  # washed out by fluid or light
    image = 0.3 * ndimage.gaussian_filter(image, (2, 2, 0)) + rng.uniform(150, 200)
  return _to_uint8(image)


def frames_classes(k: int = 2) -> dict[str, int]:
  """Class map of the frames twin with `k` classes: non_informative 0, informative 1, then
  tinted_2 .. tinted_<k-1>."""
  return {**FRAMES_CLASSES, **{f'tinted_{j}': j for j in range(2, k)}}


def tinted_frame(rng: np.random.Generator, label: int, size: int = 128) -> np.ndarray:
  """A sharp frame (as `frame_example` informative) under the colour cast of class `label`
  (>= 2): hues spread by the golden ratio over green..purple, away from the mucosa's red."""
  image = _mucosa(rng, size, size) + _smooth_noise(rng, (size, size, 1), 0.7, 10.0)
  hue = 0.3 + 0.55 * (((label - 2) * 0.6180339887) % 1.0)
  cast = np.asarray(colorsys.hsv_to_rgb(hue, 0.75, 1.0))
  grey = image.mean(axis=-1, keepdims=True)
  return _to_uint8(0.25 * image + 1.4 * grey * cast)


def write_frames(out: Path, n: int, seed: int, classes: int = 2) -> None:
  names = {label: name for name, label in frames_classes(classes).items()}
  for name in names.values():
    (out / name).mkdir(parents=True, exist_ok=True)
  n_videos = max(3, n // 5)
  for i in range(n):
    rng = _rng(seed, 6, i)
    # Frame i is in block i // n_videos; blocks cycle informative, non-informative, tinted_2,
    # ... so every video (with at least `classes` blocks) has frames of every class.
    label = (1 - i // n_videos) % classes
    image = frame_example(rng, label == 1) if label < 2 else tinted_frame(rng, label)
    file_name = f'vid{i % n_videos + 1:02d}_frame{i // n_videos + 1:04d}.jpg'
    Image.fromarray(image, mode='RGB').save(out / names[label] / file_name, quality=92)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------

_WRITERS = {
    'cubs': write_cimt,
    'cvc_clinicdb': write_cvc,
    'kvasir_seg': write_kvasir,
    'cad_pe': write_cad_pe,
    'fumpe': write_fumpe,
    'frames_folder': write_frames,
}


def _layout(app: str, layout: str | None, n: int | None,
            classes: int = 2) -> tuple[str, int]:
  """The layout and example count, checked (ConfigError naming the bad one)."""
  if classes != 2 and (app != 'frames' or isinstance(classes, bool)
                       or not isinstance(classes, int) or classes < 2):
    raise ConfigError(f'classes={classes!r}: only the frames twin has a class count, an integer '
                      f'>= 2 (app {app!r}); leave data.synthetic_classes at 2 otherwise.')
  if app not in APP_LAYOUTS:
    raise ConfigError(f'Unknown app {app!r}; use one of {list(APP_LAYOUTS)}.')
  layout = layout or APP_LAYOUTS[app][0]
  if layout not in APP_LAYOUTS[app]:
    raise ConfigError(f'App {app!r} has layouts {list(APP_LAYOUTS[app])}, not {layout!r}.')
  n = DEFAULT_N[app] if n is None else int(n)
  if n < 1:
    raise ConfigError(f'n={n}: a synthetic dataset needs at least one example; pass --n=1 or '
                      f'more (default for {app}: {DEFAULT_N[app]}).')
  return layout, n


def is_synthetic(folder: Path) -> bool:
  """Whether `folder` is a synthetic dataset written here (it holds the marker)."""
  try:
    return json.loads((Path(folder) / MARKER).read_text()).get('written_by') == 'medft'
  except (OSError, ValueError, AttributeError):
    return False


def _write_into(folder: Path, app: str, layout: str, n: int, seed: int,
                classes: int = 2) -> int:
  """Writes the dataset into the new, empty `folder` plus its marker; returns the file count
  (the marker not counted)."""
  more = {'classes': classes} if classes != 2 else {}  # two classes: as before the knob
  _WRITERS[layout](folder, n, seed, **more)
  count = sum(1 for p in folder.rglob('*') if p.is_file())
  (folder / MARKER).write_text(json.dumps({
      'written_by': 'medft', 'app': app, 'layout': layout, 'n': n, 'seed': seed, **more,
      'files': count}, indent=2) + '\n')
  return count


def _new_sibling(out: Path) -> Path:
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f'.{out.name}.incomplete.', dir=out.parent))
  except OSError as e:
    raise ResourceError(f'--out={out}: cannot write in {out.parent} ({e.strerror}); choose a '
                        'writable folder.') from None


def write(app: str, out: str | Path, n: int | None = None, seed: int = 0,
          layout: str | None = None, classes: int = 2) -> Path:
  """Writes a synthetic `app` dataset in the on-disk layout of builder `layout` into out.

  `out` must not exist, be empty, or hold a synthetic dataset written here (replaced as a
  whole); anything else raises NotOursError. The data is written to a temporary sibling and
  renamed into place, so an interrupted call leaves `out` as it was. `classes`: the frames
  twin's class count.
  """
  layout, n = _layout(app, layout, n, classes)
  out = Path(out)
  if out.exists() and not out.is_dir():
    raise NotOursError(f'--out={out} is a file, not a folder; choose a new folder.')
  if out.is_dir() and any(out.iterdir()) and not is_synthetic(out):
    raise NotOursError(f'--out={out} is a folder with files medft did not write (no {MARKER}); '
                       'it is left alone. Choose a new or empty folder.')
  tmp = _new_sibling(out)
  try:
    _write_into(tmp, app, layout, n, seed, classes)
    if out.is_dir():
      shutil.rmtree(out)  # empty, or a synthetic dataset written here
    os.rename(tmp, out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return out


def write_cached(app: str, out: Path, n: int, seed: int, layout: str,
                 classes: int = 2) -> Path:
  """Like `write`, but only once: writes to a temporary sibling and renames it into place, so
  an interrupted run never leaves a half-written folder at `out`."""
  out = Path(out)
  if out.is_dir():
    return out
  layout, n = _layout(app, layout, n, classes)
  tmp = _new_sibling(out)
  try:
    _write_into(tmp, app, layout, n, seed, classes)
    try:
      os.rename(tmp, out)
    except OSError:
      if not out.is_dir():  # another process did not win the race: a real failure
        raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m medft.data.synthetic',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--app', required=True, choices=sorted(APP_LAYOUTS))
  parser.add_argument('--out', required=True, help='folder to write (created if missing)')
  parser.add_argument('--n', type=int, default=None, help='examples (default per app)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--layout', default=None, help='builder layout, e.g. kvasir_seg or fumpe')
  parser.add_argument('--classes', type=int, default=2, help='frames: number of classes (>= 2)')
  args = parser.parse_args(argv)
  if args.n is not None and args.n < 1:
    parser.error(f'argument --n: --n={args.n}; a synthetic dataset needs at least one example '
                 f'(default for {args.app}: {DEFAULT_N[args.app]}).')
  try:
    out = write(args.app, args.out, n=args.n, seed=args.seed, layout=args.layout,
                classes=args.classes)
  except UserError as e:
    print(f'python -m medft.data.synthetic: error: {e}', file=sys.stderr)
    return 1
  files = json.loads((out / MARKER).read_text())['files']
  print(f'Wrote {files} files of a synthetic {args.app} dataset '
        f'({args.layout or APP_LAYOUTS[args.app][0]} layout) to {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
