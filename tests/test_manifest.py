"""Manifest datasets: a researcher's own files listed in a CSV/JSON-lines manifest, per app.

Each kind is built from small files made here (synthetic images, masks, volumes, profiles)
and trains one tiny arm through `medft.train`; the classification and detection kinds also
from a manifest over real Kvasir-SEG frames in ../shared. Bad manifests are refused by line
number before anything is written.
"""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medft
from configs import cimt, frames, pe, polyp
from medft import data, validate
from medft.data import manifest, synthetic
from medft.errors import ConfigError, InputFileError
from medft.report import text as report_text

SHARED = Path(__file__).resolve().parents[2] / 'shared'
KVASIR = SHARED / 'data' / 'kvasir-seg-256'


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def _rng(*keys):
  return np.random.default_rng(list(keys))


def _classification(root: Path, n: int = 24, subjects: int = 6) -> Path:
  """Informative ('sharp') and non-informative ('blurry') frames, both in every subject."""
  rows = []
  for i in range(n):
    sharp = i % 2 == 0
    image = synthetic.frame_example(_rng(1, i), sharp, size=64)
    name = f'frames/f{i:03d}.png'
    (root / 'frames').mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / name)
    rows.append([name, 'sharp' if sharp else 'blurry', f'patient{i // 2 % subjects}'])
  return _write_csv(root / 'manifest.csv', ['image', 'label', 'subject'], rows)


def _detection(root: Path, n: int = 12, subjects: int = 6) -> Path:
  rows = []
  (root / 'img').mkdir(parents=True, exist_ok=True)
  for i in range(n):
    image, mask = synthetic.polyp_example(_rng(2, i), 96, 96, 1 + i % 2)
    Image.fromarray(image).save(root / 'img' / f'{i}.png')
    Image.fromarray(mask).save(root / 'img' / f'{i}_mask.png')  # 0/1 labels, as many tools
    rows.append({'image': f'img/{i}.png', 'mask': f'img/{i}_mask.png',
                 'subject': f'video{i % subjects}'})
  path = root / 'manifest.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return path


def _write_nifti(path: Path, array: np.ndarray, spacing) -> None:
  import nibabel as nib
  # (z, y, x) array -> NIfTI (i, j, k) = (x, y, z); an LPS-aligned grid written as RAS.
  affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
  nib.save(nib.Nifti1Image(np.transpose(array, (2, 1, 0)), affine), str(path))


def _write_nrrd(path: Path, array: np.ndarray, spacing) -> None:
  import nrrd
  header = {'space': 'left-posterior-superior',
            'space directions': np.diag([spacing[2], spacing[1], spacing[0]]),
            'space origin': np.zeros(3)}
  nrrd.write(str(path), array, header, index_order='C')


def _volumes(root: Path, n: int = 6, shape=(32, 64, 64)) -> tuple[Path, list]:
  """PE-like volumes as NIfTI (even rows), NRRD (odd rows) and one DICOM series (the last);
  one subject per volume."""
  pytest.importorskip('nibabel')
  pytest.importorskip('nrrd')
  pytest.importorskip('pydicom')
  (root / 'ct').mkdir(parents=True, exist_ok=True)
  rows, truth = [], []
  for i in range(n):
    volume, labels = synthetic.pe_example(_rng(4, i), shape)
    suffix = 'nii.gz' if i % 2 == 0 else 'nrrd'
    write = _write_nifti if i % 2 == 0 else _write_nrrd
    if i == n - 1:  # a DICOM series folder (axial, origin 0) with a NIfTI mask on its grid
      synthetic.write_dicom_series(root / 'ct' / f'{i}_series', volume,
                                   [f'{k:03d}.dcm' for k in range(shape[0])], z0=0.0)
      image = f'ct/{i}_series'
    else:
      write(root / 'ct' / f'{i}.{suffix}', volume, synthetic.PE_SPACING)
      image = f'ct/{i}.{suffix}'
    write(root / 'ct' / f'{i}_clots.{suffix}', (labels > 0).astype(np.uint8),
          synthetic.PE_SPACING)
    rows.append([image, f'ct/{i}_clots.{suffix}', f'p{i}'])
    truth.append((volume, labels))
  return _write_csv(root / 'volumes.csv', ['volume', 'mask', 'subject'], rows), truth


def _cimt(root: Path, n: int = 12) -> Path:
  """Carotid images with LI/MA profiles in the two CUBS text layouts; two sides per subject."""
  (root / 'us').mkdir(parents=True, exist_ok=True)
  rows = []
  for i in range(n):
    image, li, ma = synthetic.cimt_example(_rng(5, i), 120, 160)
    Image.fromarray(image).save(root / 'us' / f'{i}.png')
    cols = np.arange(8, 152, dtype=np.float64)
    for key, curve in (('li', li), ('ma', ma)):
      points = np.stack([cols, curve[8:152]], axis=1)
      text = (' '.join(f'{x:.2f}' for x in points[:, 0]) + '\n'
              + ' '.join(f'{y:.2f}' for y in points[:, 1]) + '\n') if i % 2 else ''.join(
                  f'{x:.2f} {y:.2f}\n' for x, y in points)
      (root / 'us' / f'{i}-{key}.txt').write_text(text)
    rows.append([f'us/{i}.png', f'us/{i}-li.txt', f'us/{i}-ma.txt', 0.06, f's{i // 2}'])
  return _write_csv(root / 'cimt.csv', ['image', 'li', 'ma', 'calibration_mm_per_px',
                                        'subject'], rows)


def _data_config(name: str, path: Path, data_dir: Path, **extra) -> dict:
  return {'name': name, 'manifest': str(path), 'data_dir': str(data_dir), **extra}


def _no_leak(ds) -> None:
  """No subject (unit) in two splits, and every example's unit is its split's."""
  seen = {}
  for split, view in ds.splits.items():
    for unit in set(view.units):
      assert seen.setdefault(unit, split) == split, f'{unit} in {seen[unit]} and {split}'


def _tiny(module, arg: str = ''):
  c = module.get_config(f'depth=scratch,steps=6,batch=8{arg}')
  c.model.width, c.input_size, c.model.init_scheme = 0.125, 67, 'he'
  c.train.update(dict(eval_every=6, checkpoint_every=1000, log_every=3, workers=1))
  return c


def _train(c, name: str, path: Path, tmp_path: Path) -> dict:
  c.data.name, c.data.manifest, c.data.data_dir = name, str(path), str(tmp_path / 'data')
  return medft.train(c, tmp_path / 'run')


def _frames_config():
  c = _tiny(frames)
  c.task.update(dict(crop_size=48, test_crops=4, val_crops_per_frame=2, crops_per_frame=4))
  return c


def _polyp_config():
  c = _tiny(polyp)
  c.task.update(dict(patch_size=24, scales=(1.0,), shift_steps=(0,), orientations=1,
                     val_max_patches=64))
  return c


# ---- each kind, built and trained ------------------------------------------------------------


def test_classification_manifest_builds_with_class_names(tmp_path):
  path = _classification(tmp_path / 'mine')
  ds = data.load(_data_config('manifest_classification', path, tmp_path / 'data'))
  assert ds.app == 'frames'
  assert ds.splits['train'].classes == {'blurry': 0, 'sharp': 1}  # sorted names
  _no_leak(ds)
  n = sum(len(v) for v in ds.splits.values())
  assert n == 24 and len({u for v in ds.splits.values() for u in v.units}) == 6
  ex = ds.splits['test'][0]
  row = next(r for r in csv.DictReader(path.open()) if r['image'] == ex['id'])
  assert ex['label'] == {'blurry': 0, 'sharp': 1}[row['label']] and ex['unit'] == row['subject']
  np.testing.assert_array_equal(ex['image'], np.asarray(Image.open(path.parent / ex['id'])))
  # Trained end to end: test_split_by_image_without_subject_column (synthetic frames, and its
  # report) and test_real_kvasir_frames_through_a_manifest (real frames, by subject).


def test_detection_manifest_boxes_from_masks_and_trains(tmp_path):
  path = _detection(tmp_path / 'mine')
  ds = data.load(_data_config('manifest_detection', path, tmp_path / 'data'))
  assert ds.app == 'polyp'
  _no_leak(ds)
  ex = ds.splits['train'][0]
  mask = np.asarray(Image.open(path.parent / ex['id'].replace('.png', '_mask.png')))
  np.testing.assert_array_equal(ex['mask'], mask)  # a 0/1 mask kept as it is
  np.testing.assert_array_equal(ex['boxes'], data.masks.boxes_from_mask(mask))
  assert len(ex['boxes']) >= 1 and ex['image'].shape == (96, 96, 3)
  result = _train(_polyp_config(), 'manifest_detection', path, tmp_path)
  assert result['app'] == 'polyp' and result['test']['num_lesions'] > 0


def test_volumes_manifest_nifti_nrrd_dicom_and_trains(tmp_path):
  path, truth = _volumes(tmp_path / 'mine')
  ds = data.load(_data_config('manifest_volumes', path, tmp_path / 'data'))
  assert ds.app == 'pe'
  _no_leak(ds)
  for view in ds.splits.values():
    for i in range(len(view)):
      ex = view[i]
      volume, labels = truth[int(Path(ex['id']).name.split('.')[0].split('_')[0])]
      np.testing.assert_array_equal(ex['volume'], volume)  # same voxels, either form
      np.testing.assert_allclose(ex['spacing'], synthetic.PE_SPACING, rtol=1e-6)
      # The binary mask's connected components: one id per clot.
      np.testing.assert_array_equal(ex['labels'], data.masks.label_components(labels > 0))
      assert ex['labels'].max() >= 1
  c = _tiny(pe)
  c.task.update(dict(patch_size=24, widths_mm=(15.0,), shifts_mm=(0.0,), rotations=1,
                     val_max_patches=64))
  result = _train(c, 'manifest_volumes', path, tmp_path)
  assert result['app'] == 'pe' and result['test']['num_lesions'] > 0


def test_cimt_manifest_reads_both_profile_layouts_and_trains(tmp_path):
  path = _cimt(tmp_path / 'mine')
  ds = data.load(_data_config('manifest_cimt', path, tmp_path / 'data'))
  assert ds.app == 'cimt'
  _no_leak(ds)
  ex = ds.splits['train'][0]
  i = int(Path(ex['id']).stem)
  _, li, ma = synthetic.cimt_example(_rng(5, i), 120, 160)
  np.testing.assert_allclose(ex['li'][:, 1], li[8:152], atol=0.006)
  np.testing.assert_allclose(ex['ma'][:, 0], np.arange(8, 152))
  assert ex['cf'] == 0.06 and ex['unit'] == f's{i // 2}'
  c = _tiny(cimt)
  c.task.update(dict(patch_size=32, eval_patches_per_class=5, eval_col_stride=16,
                     patches_per_image=20))
  result = _train(c, 'manifest_cimt', path, tmp_path)
  assert result['app'] == 'cimt' and len(result['test']['per_image']) >= 3


# ---- the real Kvasir-SEG copy ------------------------------------------------------------------


def _kvasir_manifests(out: Path, n: int = 40) -> tuple[Path, Path]:
  """Classification (polyp larger or smaller than the median area) and detection manifests
  over the first `n` frames, 2 frames per made-up subject, paths relative to `out`."""
  ids = sorted(p.stem for p in (KVASIR / 'images').glob('*.jpg'))[:n]
  areas = {i: (np.asarray(Image.open(KVASIR / 'masks' / f'{i}.jpg').convert('L')) > 127).sum()
           for i in ids}
  median = np.median(list(areas.values()))
  def rel(i, folder='images'):  # relative to the manifest, as a user would write it
    return os.path.relpath(KVASIR / folder / f'{i}.jpg', out)
  classify = _write_csv(out / 'kvasir_size.csv', ['image', 'label', 'subject'],
                        [[rel(i), 'large' if areas[i] > median else 'small', f'g{k // 2}']
                         for k, i in enumerate(ids)])
  detect = _write_csv(out / 'kvasir_polyps.csv', ['image', 'mask', 'subject'],
                      [[rel(i), rel(i, 'masks'), f'g{k // 2}']
                       for k, i in enumerate(ids)])
  return classify, detect


@pytest.mark.skipif(not KVASIR.is_dir(), reason=f'real Kvasir-SEG copy not found at {KVASIR} '
                    '(../shared is absent)')
@pytest.mark.parametrize('kind', ['classification', 'detection'])
def test_real_kvasir_frames_through_a_manifest(tmp_path, kind):
  classify, detect = _kvasir_manifests(tmp_path / 'manifests')
  path = classify if kind == 'classification' else detect
  name = f'manifest_{kind}'
  ds = data.load(_data_config(name, path, tmp_path / 'data'))
  _no_leak(ds)
  assert sum(len(v) for v in ds.splits.values()) == 40
  assert len({u for v in ds.splits.values() for u in v.units}) == 20
  if kind == 'classification':
    assert ds.splits['train'].classes == {'large': 0, 'small': 1}
    c = _frames_config()
  else:
    ex = ds.splits['train'][0]
    assert ex['image'].shape == (256, 256, 3) and ex['mask'].max() == 1 and len(ex['boxes'])
    c = _polyp_config()
  result = _train(c, name, path, tmp_path)
  assert result['steps'] == 6 and result['dataset'] == name


# ---- splits, units, names ----------------------------------------------------------------------


def test_subjects_never_span_two_splits_across_seeds(tmp_path):
  path = _classification(tmp_path / 'mine', n=40, subjects=10)
  for seed in range(4):
    ds = data.load(_data_config('manifest_classification', path, tmp_path / 'data',
                                split_seed=seed, val_share=0.2, test_share=0.3))
    _no_leak(ds)
    by_split = {s: set(v.units) for s, v in ds.splits.items()}
    assert sum(map(len, by_split.values())) == 10


def test_split_by_image_without_subject_column(tmp_path):
  root = tmp_path / 'mine'
  _classification(root, n=20)
  rows = list(csv.DictReader((root / 'manifest.csv').open()))
  path = _write_csv(root / 'nosubject.csv', ['image', 'label'],
                    [[r['image'], r['label']] for r in rows])
  cfg = _data_config('manifest_classification', path, tmp_path / 'data')
  with pytest.raises(InputFileError, match=r'(?s)nosubject\.csv has no `subject` column.*'
                     'split_by=image'):
    data.load(cfg)
  ds = data.load({**cfg, 'split_by': 'image'})
  units = [u for v in ds.splits.values() for u in v.units]
  assert sorted(units) == sorted(r['image'] for r in rows)  # each image its own unit
  # A tiny run of it, and the report of its folder says how it was split.
  from medft.report import build_report
  from medft.sweep import run_dir
  c = _frames_config()
  c.data.update(dict(name='manifest_classification', manifest=str(path), split_by='image',
                     data_dir=str(tmp_path / 'data')))
  result = medft.train(c, run_dir(tmp_path / 'study', 'scratch', 1.0, 0))
  assert result['app'] == 'frames' and result['steps'] == 6
  assert result['dataset'] == 'manifest_classification' and 0 <= result['test_auc'] <= 1
  build_report(tmp_path / 'study', n_boot=20)
  assert report_text.SPLIT_BY_IMAGE in (tmp_path / 'study' / 'report.md').read_text()


def test_two_manifests_never_share_a_prepared_copy(tmp_path):
  path = _classification(tmp_path / 'mine', n=8, subjects=4)
  first = data.load(_data_config('manifest_classification', path, tmp_path / 'data'))
  other = _write_csv(tmp_path / 'mine' / 'fewer.csv', ['image', 'label', 'subject'],
                     [r.values() for r in list(csv.DictReader(path.open()))[:6]])
  second = data.load(_data_config('manifest_classification', other, tmp_path / 'data'))
  assert first.info['prepared_dir'] != second.info['prepared_dir']
  assert sum(len(v) for v in second.splits.values()) == 6
  # An edited image (same manifest) is prepared again from the changed file.
  image = path.parent / 'frames' / 'f000.png'
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
  again = data.load(_data_config('manifest_classification', path, tmp_path / 'data'))
  assert again.info['prepared_dir'] == first.info['prepared_dir']
  view = next(v for v in again.splits.values() if 'frames/f000.png' in v.ids)
  assert view[view.ids.index('frames/f000.png')]['image'].max() == 0


def test_integer_labels_are_kept_as_given(tmp_path):
  path = _classification(tmp_path / 'mine', n=8, subjects=4)
  rows = list(csv.DictReader(path.open()))
  ints = _write_csv(path.parent / 'ints.csv', ['image', 'label', 'subject'],
                    [[r['image'], int(r['label'] == 'blurry'), r['subject']] for r in rows])
  ds = data.load(_data_config('manifest_classification', ints, tmp_path / 'data'))
  assert ds.splits['train'].classes == {'0': 0, '1': 1}
  ex = ds.splits['train'][0]
  assert ex['label'] == int(dict((r['image'], r['label']) for r in rows)[ex['id']] == 'blurry')
  gap = _write_csv(path.parent / 'gap.csv', ['image', 'label', 'subject'],
                   [[r['image'], 2 * (r['label'] == 'blurry'), r['subject']] for r in rows])
  with pytest.raises(InputFileError, match=r'gap\.csv has integer labels \[0, 2\].*0\.\.1'):
    data.load(_data_config('manifest_classification', gap, tmp_path / 'data'))


# ---- bad manifests ---------------------------------------------------------------------------


def test_bad_rows_are_named_by_line_and_nothing_is_prepared(tmp_path):
  root = tmp_path / 'mine'
  _detection(root, n=6)
  (root / 'broken.png').write_bytes(b'not an image')
  Image.fromarray(np.zeros((50, 96), np.uint8)).save(root / 'small_mask.png')
  rows = [
      ['img/0.png', 'img/0_mask.png', 'a'],      # line 2: good
      ['img/missing.png', 'img/1_mask.png', 'a'],  # line 3: missing file
      ['img/2.png', 'img/2_mask.png', ''],       # line 4: empty subject
      ['broken.png', 'img/3_mask.png', 'b'],     # line 5: unreadable image (found by decoding)
      ['img/4.png', 'small_mask.png', 'b'],      # line 6: mask shape != image shape
      ['img/0.png', 'img/5_mask.png', 'c'],      # line 7: duplicate image row
  ]
  path = _write_csv(root / 'bad.csv', ['image', 'mask', 'subject'], rows)
  cfg = _data_config('manifest_detection', path, tmp_path / 'data')
  with pytest.raises(InputFileError) as cheap:
    data.load(cfg)
  message = str(cheap.value)
  assert str(path) in message and 'nothing was prepared' in message
  assert "line 3: image 'img/missing.png': no such file" in message
  assert 'line 4: empty subject' in message
  assert "line 7: image 'img/0.png' is listed again (first on line 2)" in message
  assert not (tmp_path / 'data').exists()
  # The rows that need decoding fail once the cheap ones are fixed, before any writing.
  path = _write_csv(root / 'bad.csv', ['image', 'mask', 'subject'], [rows[0], *rows[3:5]])
  with pytest.raises(InputFileError) as deep:
    data.load(cfg)
  message = str(deep.value)
  assert 'has 2 bad rows' in message and 'line 3: Cannot read image' in message
  assert 'line 4: mask small_mask.png is 50x96, its image 4.png is 96x96' in message
  assert not (tmp_path / 'data').exists()


def test_bad_values_of_each_kind(tmp_path):
  root = tmp_path / 'mine'
  path = _cimt(root, n=4)
  rows = list(csv.reader(path.open()))
  rows[1][3] = '-0.06'
  rows[2][3] = 'abc'
  rows[3][1] = 'us/0-ma.txt'  # still a valid file: fine
  rows[4][2] = 'us/nothere.txt'
  bad = _write_csv(root / 'bad.csv', rows[0], rows[1:])
  with pytest.raises(InputFileError) as e:
    data.load(_data_config('manifest_cimt', bad, tmp_path / 'data'))
  message = str(e.value)
  assert "line 2: calibration_mm_per_px '-0.06' is not a positive number" in message
  assert "line 3: calibration_mm_per_px 'abc' is not a positive number" in message
  assert "line 5: ma 'us/nothere.txt': no such file" in message and 'line 4' not in message
  # A malformed profile is found by decoding, named with its line.
  (root / 'us' / '1-li.txt').write_text('1 2 3\n')
  with pytest.raises(InputFileError, match=r'line 3: Malformed profile .*1-li\.txt'):
    data.load(_data_config('manifest_cimt', path, tmp_path / 'data'))
  assert not (tmp_path / 'data').exists()


def test_more_than_ten_bad_rows_are_counted(tmp_path):
  path = _write_csv(tmp_path / 'm.csv', ['image', 'label', 'subject'],
                    [[f'x{i}.png', 'a', 's'] for i in range(14)])
  with pytest.raises(InputFileError, match=r'(?s)14 bad rows.*line 11:.*\.\.\. and 4 more') as e:
    manifest.read(str(path), 'classification')
  assert 'line 12' not in str(e.value)


@pytest.mark.parametrize('header, rows, match', [
    (['image', 'subject'], [['a.png', 's']], r"lacks the columns \['label'\]"),
    (['image', 'label', 'subject', 'notes'], [['a.png', 'x', 's', '']],
     r"unknown columns \['notes'\]"),
    (['image', 'label', 'subject'], [], 'has a header but no rows'),
    (['image', 'image', 'subject'], [['a', 'b', 'c']], r"columns \['image'\] twice"),
])
def test_header_errors_name_the_manifest(tmp_path, header, rows, match):
  path = _write_csv(tmp_path / 'm.csv', header, rows)
  with pytest.raises(InputFileError, match=match) as e:
    manifest.read(str(path), 'classification')
  assert str(path) in str(e.value)


def test_empty_and_malformed_files(tmp_path):
  empty = tmp_path / 'empty.csv'
  empty.write_text('\n\n')
  with pytest.raises(InputFileError, match=r'empty\.csv is empty'):
    manifest.read(str(empty), 'detection')
  lines = tmp_path / 'm.jsonl'
  lines.write_text('{"image": "a.png", "label": "x", "subject": "s"}\n[1, 2]\n{oops\n')
  with pytest.raises(InputFileError, match=r'(?s)line 1: image .*line 2: a JSON list.*'
                     r'line 3: not valid JSON'):
    manifest.read(str(lines), 'classification')
  with pytest.raises(ConfigError, match=r'\.csv or \.jsonl'):
    manifest.read(str(tmp_path / 'm.txt'), 'classification')
  with pytest.raises(InputFileError, match='does not exist'):
    manifest.read(str(tmp_path / 'gone.csv'), 'classification')


def test_config_fields_are_checked(tmp_path):
  path = _classification(tmp_path / 'mine', n=8, subjects=4)
  c = _frames_config()
  c.data.name, c.data.manifest = 'manifest_detection', str(path)
  with pytest.raises(ConfigError, match=r'data\.name=.manifest_detection.*frames application.*'
                     r'configs/polyp\.py'):
    validate.check_config(c)
  c.data.name, c.data.split_by = 'manifest_classification', 'images'
  with pytest.raises(ConfigError, match=r'data\.split_by'):
    validate.check_config(c)
  for extra, match in (({'manifest': str(path)}, r'data\.manifest=.* is read only by the '
                        'manifest datasets'),
                       ({'split_by': 'image'}, 'applies to the manifest datasets')):
    with pytest.raises(ConfigError, match=match):
      data.load({'name': 'synthetic_frames', 'data_dir': str(tmp_path / 'd'), **extra})
  with pytest.raises(ConfigError, match="Unknown dataset 'synthetic_manifest_cimt'"):
    data.load({'name': 'synthetic_manifest_cimt', 'data_dir': str(tmp_path / 'd')})
  with pytest.raises(ConfigError, match=r'needs data\.manifest'):
    data.load({'name': 'manifest_cimt', 'data_dir': str(tmp_path / 'd')})
  with pytest.raises(ConfigError, match=r'remove data\.manual_dir'):
    data.load(_data_config('manifest_classification', path, tmp_path / 'd',
                           manual_dir=str(tmp_path)))


def test_three_class_manifest_with_the_frames_config(tmp_path):
  """K classes come from the manifest's labels (not the frames config's default class map)."""
  path = _classification(tmp_path / 'mine', n=12, subjects=6)
  rows = list(csv.DictReader(path.open()))
  three = _write_csv(path.parent / 'three.csv', ['image', 'label', 'subject'],
                     [[r['image'], 'abc'[k % 3], r['subject']] for k, r in enumerate(rows)])
  c = frames.get_config('depth=scratch,classes=3,steps=6,batch=8')
  c.data.name, c.data.manifest = 'manifest_classification', str(three)
  c.data.data_dir = str(tmp_path / 'data')
  validate.check_config(c)
  ds = data.load(c.data)
  assert ds.splits['train'].classes == {'a': 0, 'b': 1, 'c': 2}
  labels = {ex_id: 'abc'.index(label) for ex_id, label in
            ((r[0], r[1]) for r in csv.reader(three.open()) if r[0] != 'image')}
  view = ds.splits['test']
  assert [view[i]['label'] for i in range(len(view))] == [labels[i] for i in view.ids]


def test_a_run_of_an_older_medft_without_the_manifest_fields_resumes():
  from medft import trainer
  c = _frames_config()
  held = trainer._config_dict(c)
  del held['data']['manifest'], held['data']['split_by']
  assert trainer._resumes_as_before(c, held)
  c.data.split_by = 'image'  # a run that did set a field is another config
  assert not trainer._resumes_as_before(c, trainer._config_dict(_frames_config()))


def test_a_volume_mask_off_its_grid_is_named_by_line(tmp_path):
  pytest.importorskip('nibabel')
  root = tmp_path / 'mine'
  root.mkdir()
  volume = np.full((6, 8, 8), 40, np.int16)
  _write_nifti(root / 'ct.nii.gz', volume, (1.0, 1.0, 1.0))
  _write_nifti(root / 'mask.nii.gz', np.zeros((6, 8, 9), np.uint8), (1.0, 1.0, 1.0))
  (root / 'notct.nii.gz').write_bytes(b'not a volume')
  path = _write_csv(root / 'v.csv', ['volume', 'mask', 'subject'],
                    [['ct.nii.gz', 'mask.nii.gz', 'a'], ['notct.nii.gz', 'mask.nii.gz', 'b']])
  with pytest.raises(InputFileError) as e:
    data.load(_data_config('manifest_volumes', path, tmp_path / 'data'))
  assert 'line 2: Mask' in str(e.value) and 'is (6, 8, 9)' in str(e.value)
  assert 'line 3: Cannot read NIfTI file' in str(e.value)
  assert not (tmp_path / 'data').exists()
