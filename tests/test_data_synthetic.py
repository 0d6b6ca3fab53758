"""The synthetic writer: real layouts, determinism, CLI, the twin cache and the load API."""

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from medft import data
from medft.data import synthetic


def _digest(folder: Path) -> str:
  h = hashlib.sha256()
  for path in sorted(p for p in folder.rglob('*') if p.is_file()):
    h.update(path.relative_to(folder).as_posix().encode())
    h.update(path.read_bytes())
  return h.hexdigest()


def test_layouts_and_determinism(tmp_path):
  a = synthetic.write('cimt', tmp_path / 'a', n=4, seed=1)
  b = synthetic.write('cimt', tmp_path / 'b', n=4, seed=1)
  c = synthetic.write('cimt', tmp_path / 'c', n=4, seed=2)
  assert _digest(a) == _digest(b) != _digest(c)
  assert sorted(p.name for p in (a / 'IMAGES').iterdir()) == [
      'clin_0001_L.tiff', 'clin_0001_R.tiff', 'clin_0002_L.tiff', 'clin_0002_R.tiff']
  assert (a / 'CF' / 'clin_0002_R_CF.txt').is_file()
  assert (a / 'SEGMENTATIONS' / 'A1' / 'clin_0001_L-LI.txt').is_file()
  kvasir = synthetic.write('polyp', tmp_path / 'k', n=2, layout='kvasir_seg')
  assert (kvasir / 'kavsir_bboxes.json').is_file() and len(list((kvasir / 'masks').iterdir())) == 2
  cvc = synthetic.write('polyp', tmp_path / 'cvc', n=6)
  assert sorted(int(p.stem) for p in (cvc / 'Original').iterdir()) == [1, 2, 3, 4, 26, 27]
  with pytest.raises(ValueError, match='layouts'):
    synthetic.write('pe', tmp_path / 'x', layout='cubs')


def test_cli(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'medft.data.synthetic', '--app=frames', f'--out={tmp_path}',
       '--n=4', '--seed=3'],
      capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
  assert 'Wrote 4 files' in result.stdout
  assert all(any((tmp_path / c).iterdir()) for c in synthetic.FRAMES_CLASSES)


def test_twin_cache_is_keyed_by_n_and_seed(tmp_path):
  small = data.load({'name': 'synthetic_frames', 'data_dir': str(tmp_path), 'synthetic_n': 10,
                     'synthetic_seed': 5})
  assert sum(len(v) for v in small.splits.values()) == 10
  assert small.info['synthetic']['raw_dir'].endswith('frames_folder-n10-seed5/raw')
  assert (tmp_path / 'synthetic' / 'frames_folder-n10-seed5' / 'tfds').is_dir()
  assert not [p for p in (tmp_path / 'synthetic').iterdir() if 'incomplete' in p.name]


def test_load_api_contract(tmp_path):
  ds = data.load({'name': 'synthetic_frames', 'data_dir': str(tmp_path), 'split_seed': 2})
  assert list(ds.splits) == ['train', 'validation', 'test']
  view = ds.splits['train']
  assert len(view[:3]) == 3 and view[-1]['id'] == view.ids[-1]
  with pytest.raises(IndexError):
    view[len(view)]
  clone = pickle.loads(pickle.dumps(view))  # e.g. for grain worker processes
  assert clone[0]['id'] == view[0]['id']
  for key in ('builder', 'version', 'split_seed', 'units', 'source_dir', 'fraction'):
    assert key in ds.info
  with pytest.raises(ValueError, match='Unknown data config fields'):
    data.load({'name': 'synthetic_frames', 'data_dir': str(tmp_path), 'fracton': 0.5})
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.load({'name': 'imagenet', 'data_dir': str(tmp_path)})
  ml_collections = pytest.importorskip('ml_collections')
  cfg = ml_collections.ConfigDict({'name': 'synthetic_frames', 'data_dir': str(tmp_path),
                                   'fraction': 0.5, 'split_seed': 2})
  half = data.load(cfg)
  assert set(half.info['units']['train']) < set(ds.info['units']['train'])
  no_val = data.load({'name': 'synthetic_frames', 'data_dir': str(tmp_path), 'val_share': 0.0})
  assert len(no_val.splits['validation']) == 0 and no_val.info['units']['validation'] == []
