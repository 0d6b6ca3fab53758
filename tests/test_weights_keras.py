"""The Keras HDF5 importer: random-weight SqueezeNet files in the layouts Keras 2 writes,
checked against the NumPy reference, and the real ImageNet file in ../shared."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_numpy as ref
import weights_helpers as helpers

from medft.models import get_model
from medft.models.alexnet import kernel_init
from medft.weights import convert, load_artifact, merge_params

h5py = pytest.importorskip('h5py')

WIDTH, INPUT = 0.25, 63
REAL_FILE = helpers.SHARED / 'weights' / 'squeezenet_v1.1_imagenet_notop.h5'


def _keras_layer_names(style):
  """How a Keras port names fire2/squeeze1x1: as a layer name, and its weights' prefix."""
  if style == 'slash':  # rcmalli/keras-squeezenet, the ../shared file
    return lambda n: (n, f'{n}_3')
  if style == 'underscore':
    return lambda n: (n.replace('/', '_'), n.replace('/', '_'))
  raise ValueError(style)


def write_keras_h5(path, deepscale_params, style='slash'):
  """A Keras 2 `save_weights` HDF5 file of `deepscale_params` (Caffe layout, converted here
  to Keras' (kh, kw, in, out)), with the attributes Keras 2 writes; style 'no_attrs' leaves
  them out and nests `layer/kernel:0` directly."""
  with h5py.File(path, 'w') as f:
    f.attrs['backend'], f.attrs['keras_version'] = b'tensorflow', b'2.0.0'
    layer_names = [b'input_1']
    f.create_group('input_1').attrs['weight_names'] = np.array([], np.float64)
    for name, p in deepscale_params.items():
      kernel = p['weight'].transpose(2, 3, 1, 0)
      if style == 'no_attrs':
        f[f'{name}/kernel:0'], f[f'{name}/bias:0'] = kernel, p['bias']
        continue
      layer, prefix = _keras_layer_names(style)(name)
      group = f.require_group(layer)
      weights = [f'{prefix}/kernel:0', f'{prefix}/bias:0']
      group.attrs['weight_names'] = np.array([w.encode() for w in weights])
      group[weights[0]], group[weights[1]] = kernel, p['bias']
      relu = f.require_group(f'{layer}_relu')
      relu.attrs['weight_names'] = np.array([], np.float64)
      layer_names += [layer.encode(), f'{layer}_relu'.encode()]
    if style != 'no_attrs':
      f.attrs['layer_names'] = np.array(layer_names)
  return path


def _small_squeezenet(seed=0, num_classes=5, width=WIDTH):
  rng = np.random.default_rng(seed)
  conv1, fires = helpers.channels('squeezenet1_1', width)
  return ref.random_squeezenet1_1(rng, conv1, fires, num_classes), rng


@pytest.mark.parametrize('style', ['slash', 'underscore', 'no_attrs'])
def test_squeezenet_matches_reference(tmp_path, style):
  params, rng = _small_squeezenet()
  src = write_keras_h5(tmp_path / 'squeezenet.h5', params, style)
  converted, meta = convert.read_weights(src, 'keras', 'squeezenet1_1',
                                         model_kwargs={'width': WIDTH})
  assert (meta.channel_order, meta.scale, meta.mean, meta.std, meta.input_size) == (
      'BGR', 255.0, (104.0, 117.0, 123.0), (1.0, 1.0, 1.0), (227, 227))
  assert meta.num_source_classes == 5
  x = helpers.random_input(rng, 2, INPUT)
  ref_logits, ref_acts = ref.squeezenet1_1(params, x, 'floor')  # Keras pools "valid"
  helpers.compare('squeezenet1_1', converted, ref_logits, ref_acts, {n: n for n in params}, x,
                  5, width=WIDTH)


def test_full_size_squeezenet_at_227(tmp_path):
  params, rng = _small_squeezenet(seed=1, num_classes=1000, width=1.0)
  src = write_keras_h5(tmp_path / 'squeezenet.h5', params)
  converted, meta = convert.read_weights(src, 'keras', 'squeezenet1_1')
  assert meta.num_source_classes == 1000
  x = helpers.random_input(rng, 1, 227)
  ref_logits, ref_acts = ref.squeezenet1_1(params, x, 'floor')
  helpers.compare('squeezenet1_1', converted, ref_logits, ref_acts, {n: n for n in params}, x,
                  1000)


def test_notop_file_converts_without_head(tmp_path):
  params, _ = _small_squeezenet()
  del params['conv10']
  src = write_keras_h5(tmp_path / 'notop.h5', params)
  converted, meta = convert.read_weights(src, 'keras', 'squeezenet1_1',
                                         model_kwargs={'width': WIDTH})
  assert 'conv10' not in converted and meta.num_source_classes == 0


def _conv1_correlations(kernel):
  """Correlation of neighbouring taps (spatial) and of neighbouring colour channels."""
  k = np.asarray(kernel)  # (kh, kw, 3, out)
  a = np.concatenate([k[:, :-1].ravel(), k[:-1, :].ravel()])
  b = np.concatenate([k[:, 1:].ravel(), k[1:, :].ravel()])
  spatial = np.corrcoef(a, b)[0, 1]
  colour = min(np.corrcoef(k[:, :, 0].ravel(), k[:, :, 1].ravel())[0, 1],
               np.corrcoef(k[:, :, 1].ravel(), k[:, :, 2].ravel())[0, 1])
  return spatial, colour


@pytest.mark.skipif(not REAL_FILE.is_file(), reason=f'{REAL_FILE} is absent (no ../shared)')
def test_real_imagenet_file_loads_into_squeezenet(tmp_path):
  out = convert.convert(REAL_FILE, 'keras', 'squeezenet1_1', tmp_path / 'squeezenet')
  loaded, meta = load_artifact(out)
  assert meta.source_sha256 == ('2d935d8c102ad1232484a77da8e6fbdf3ff4ab608974a0d8b6283115ffff'
                                '204f')
  assert meta.num_source_classes == 0 and 'conv10' not in loaded
  # A stand-in for a fresh init with the model's tree (module.init itself is slow on CPU).
  module, _ = get_model('squeezenet1_1', 2)
  x = jax.ShapeDtypeStruct((1, 227, 227, 3), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)['params']
  rng = np.random.default_rng(0)
  init = jax.tree.map(lambda s: rng.normal(0, 0.01, s.shape).astype(np.float32), shapes)
  with pytest.raises(ValueError, match=r'missing \(2\): conv10/bias, conv10/kernel'):
    merge_params(loaded, init)
  params = merge_params(loaded, init, dont_load=['conv10'], source=str(REAL_FILE))
  np.testing.assert_array_equal(params['conv10']['kernel'], init['conv10']['kernel'])
  np.testing.assert_array_equal(params['fire9']['expand3x3']['bias'],
                                loaded['fire9']['expand3x3']['bias'])
  # ImageNet filters are smooth and colour-correlated; the model's own init is neither.
  spatial, colour = _conv1_correlations(params['conv1']['kernel'])
  fresh = kernel_init('xavier', 0.01)(jax.random.key(1), params['conv1']['kernel'].shape)
  fresh_spatial, fresh_colour = _conv1_correlations(fresh)
  assert spatial > 0.15 and colour > 0.3, (spatial, colour)
  assert abs(fresh_spatial) < 0.1 and abs(fresh_colour) < 0.1, (fresh_spatial, fresh_colour)
  # BGR 0..255 minus the mean, as meta says.
  x = np.random.default_rng(1).uniform(0, 255, (1, 227, 227, 3)).astype(np.float32)
  x = (x - np.float32(meta.mean)) / np.float32(meta.std)
  logits = jax.jit(module.apply)({'params': params}, x)
  assert logits.shape == (1, 2) and np.isfinite(np.asarray(logits)).all()


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_truncated_and_non_hdf5_files(tmp_path):
  params, _ = _small_squeezenet()
  src = write_keras_h5(tmp_path / 'squeezenet.h5', params)
  data = src.read_bytes()
  src.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r'squeezenet\.h5: cannot be read as Keras HDF5 weights.*'
                                       r'truncated'):
    convert.read_weights(src, 'keras', 'squeezenet1_1')
  text = tmp_path / 'weights.h5'
  text.write_text('not hdf5 at all\n' * 100)
  with pytest.raises(ValueError, match=r'weights\.h5: cannot be read as Keras HDF5 weights'):
    convert.read_weights(text, 'keras', 'squeezenet1_1')
  with pytest.raises(FileNotFoundError, match=r'absent\.h5: no such file'):
    convert.read_weights(tmp_path / 'absent.h5', 'keras', 'squeezenet1_1')


def test_other_architecture_is_named(tmp_path):
  params, _ = _small_squeezenet()
  src = write_keras_h5(tmp_path / 'squeezenet.h5', params)
  with pytest.raises(ValueError, match=r'squeezenet\.h5: --format=keras converts [a-z0-9_, ]*'
                                       r'squeezenet1_1[a-z0-9_, ]*, not --arch=alexnet\. '
                                       r'The layout looks like squeezenet1_1: pass '
                                       r'--arch=squeezenet1_1'):
    convert.read_weights(src, 'keras', 'alexnet')


def test_shape_mismatch_names_the_parameter(tmp_path):
  params, _ = _small_squeezenet()
  src = write_keras_h5(tmp_path / 'squeezenet.h5', params)
  with pytest.raises(ValueError, match=r'(?s)squeezenet\.h5: the converted weights do not fit '
                                       r'squeezenet1_1.*mis-shaped.*conv1/kernel: converted '
                                       r'\(3, 3, 3, 16\), squeezenet1_1 expects \(3, 3, 3, 64\)'):
    convert.read_weights(src, 'keras', 'squeezenet1_1')
