"""DenseNet-121 (torchvision and keras.applications layouts): the importers against the NumPy
reference, with random weights and BatchNorm statistics written by the test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_numpy as ref
import weights_helpers as helpers
from test_resnet import assert_matches, state_dict, write_keras_h5

from medft import tuning
from medft.models import get_model
from medft.weights import convert

WIDTH = 0.125  # growth 4, stem 8 (bn_size 4): all 58 dense layers, few channels
INPUT = 67     # odd: the stem, three transitions' 2x2 pools and the padded max pool are ragged


def _sizes():
  w = lambda n: max(2, int(n * WIDTH))  # noqa: E731  (the model's width rule)
  return dict(growth=w(32), stem=w(64))


def test_units_and_labels():
  model, units = get_model('densenet121', 3, width=WIDTH)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert units == ('stem', 'block1', 'block2', 'block3', 'block4', 'classifier')
  assert set(v['params']) == set(units) and set(v['batch_stats']) == set(units[:-1])
  assert set(v['params']['block3']) == ({f'denselayer{i}' for i in range(1, 25)}
                                        | {'transition_norm', 'transition_conv'})
  assert set(v['params']['block4']) == {f'denselayer{i}' for i in range(1, 17)} | {'norm5'}
  labels = tuning.param_labels(v['params'], units, 'block4')
  assert labels['block3']['transition_norm']['scale'] == 'frozen'
  assert labels['block4']['norm5']['bias'] == 'body_bias'


def test_torchvision_densenet_safetensors_matches_reference(tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  rng = np.random.default_rng(0)
  params = ref.random_torchvision_densenet(rng, num_classes=4, **_sizes())
  src = tmp_path / 'densenet121.safetensors'
  safetensors_numpy.save_file(state_dict(params), str(src))
  converted, stats, meta = convert.read_variables(src, 'safetensors', 'densenet121',
                                                  model_kwargs={'width': WIDTH})
  assert (meta.channel_order, meta.num_source_classes) == ('RGB', 4)
  np.testing.assert_array_equal(stats['block2']['transition_norm']['mean'],
                                params['features.transition2.norm']['running_mean'])
  x = helpers.random_input(rng, 2, INPUT)
  ref_logits, ref_acts = ref.torchvision_densenet(params, x)
  _, units = get_model('densenet121', 4)
  assert_matches('densenet121', converted, stats, x, ref_logits, ref_acts, 4, units,
                 width=WIDTH)


def test_keras_densenet121_matches_reference(tmp_path):
  """keras.applications DenseNet121 (eps 1.001e-5, zero-padded max pool) loads into the
  same `densenet121` as torchvision's, with Keras' input convention (its 'torch' mode)."""
  h5py = pytest.importorskip('h5py')
  rng = np.random.default_rng(1)
  params = ref.random_keras_densenet121(rng, num_classes=4, **_sizes())
  src = write_keras_h5(h5py, tmp_path / 'densenet121.h5', params)
  converted, stats, meta = convert.read_variables(src, 'keras', 'densenet121',
                                                  model_kwargs={'width': WIDTH})
  assert (meta.channel_order, meta.scale, meta.std) == ('RGB', 1.0, (0.229, 0.224, 0.225))
  x = helpers.random_input(rng, 2, INPUT)
  ref_logits, ref_acts = ref.keras_densenet121(params, x)
  _, units = get_model('densenet121', 4)
  assert_matches('densenet121', converted, stats, x, ref_logits, ref_acts, 4, units,
                 width=WIDTH)
