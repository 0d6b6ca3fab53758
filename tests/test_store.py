"""The converted-weights artifact: round trip, key diff, atomic writes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medft.models import get_model
from medft.weights import store


def _params(arch='alexnet', classes=3, width=0.125):
  model, _ = get_model(arch, classes, width=width)
  return jax.tree.map(np.asarray, model.init(jax.random.key(0),
                                             jnp.zeros((1, 67, 67, 3)))['params'])


def test_round_trip_is_exact(tmp_path):
  params = _params()
  meta = store.Meta(arch='alexnet', channel_order='BGR', scale=255.0, mean=(104., 117., 123.),
                    input_size=(67, 67), source_format='caffe')
  store.save_artifact(tmp_path / 'w', params, meta)
  loaded, meta2 = store.load_artifact(tmp_path / 'w')
  assert meta2 == meta
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    assert a.tobytes() == b.tobytes()
  assert json.loads((tmp_path / 'w' / 'meta.json').read_text())['channel_order'] == 'BGR'


def test_merge_keeps_dont_load_units_and_reports_misfits():
  params = _params()
  fresh = jax.tree.map(lambda x: x + 1, params)
  merged = store.merge_params(params, fresh, dont_load=['fc8'])
  assert np.array_equal(merged['conv1']['kernel'], params['conv1']['kernel'])
  assert np.array_equal(merged['fc8']['kernel'], fresh['fc8']['kernel'])
  other = _params(classes=5)
  del other['conv3']
  other['conv9'] = {'kernel': np.zeros(3)}
  with pytest.raises(ValueError) as e:
    store.merge_params(other, params, source='weights in x')
  msg = str(e.value)
  assert 'missing (2): conv3/bias, conv3/kernel' in msg
  assert 'unexpected (1): conv9/kernel' in msg
  assert 'fc8/kernel: file (512, 5) vs model (512, 3)' in msg


def test_save_refuses_to_overwrite_and_leaves_no_partial_folder(tmp_path):
  params = _params()
  store.save_artifact(tmp_path / 'w', params, store.default_meta('alexnet'))
  with pytest.raises(FileExistsError, match='already exists'):
    store.save_artifact(tmp_path / 'w', params, store.default_meta('alexnet'))
  bad = {'conv1': {'kernel': object()}}
  with pytest.raises(Exception):
    store.save_artifact(tmp_path / 'bad', bad, store.default_meta('alexnet'))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['w']


def test_load_errors_name_the_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere'):
    store.load_artifact(tmp_path / 'nowhere')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='not a converted-weights folder'):
    store.load_artifact(tmp_path / 'empty')
