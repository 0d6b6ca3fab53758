"""ResNet-18/50 (torchvision layout) and Keras' ResNet50: the importers against the NumPy
reference (random weights and BatchNorm statistics written by the test in each source format),
the artifact's batch_stats, and the BatchNorm modes of the model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_numpy as ref
import weights_helpers as helpers
from flax import traverse_util

from medft import tuning
from medft.models import get_model
from medft.models.batchnorm import bn_settings
from medft.weights import convert, load_artifact, store

safetensors_numpy = pytest.importorskip('safetensors.numpy')

WIDTH = 0.125
INPUT = 45  # odd sides: every strided conv and the padded max pool see a ragged edge
RTOL = 1e-5  # of the largest reference value (logits of order 10)


def widths(width):
  w = lambda n: max(2, int(n * width))  # noqa: E731  (the models' width rule)
  return w(64), tuple(w(n) for n in (64, 128, 256, 512))


def state_dict(params):
  return {f'{layer}.{key}': value for layer, d in params.items() for key, value in d.items()}


@functools.lru_cache
def _jitted_apply(arch, num_classes, kwargs):
  """One compiled forward per network, shared by the tests (eager is 3x slower)."""
  module, _ = get_model(arch, num_classes, **dict(kwargs))
  return jax.jit(module.apply, static_argnames=('start', 'stop'))


def forward(arch, params, batch_stats, x_nchw, num_classes, start=None, stop=None, **kwargs):
  """medft's model in inference mode on NCHW input (NCHW / (N, F) output)."""
  x = np.asarray(x_nchw, np.float32)
  x = jnp.asarray(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)
  apply = _jitted_apply(arch, num_classes, tuple(sorted(kwargs.items())))
  y = np.asarray(apply({'params': params, 'batch_stats': batch_stats}, x, start=start,
                       stop=stop), np.float64)
  return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


def assert_matches(arch, params, batch_stats, x, ref_logits, ref_acts, num_classes, units,
                   **kwargs):
  """Each stage's output (run stage by stage on medft's own previous output) and the logits
  to RTOL of the reference's largest value."""
  y = x
  for unit in units:
    y = forward(arch, params, batch_stats, y, num_classes, start=unit, stop=unit, **kwargs)
    if unit != units[-1]:
      helpers.assert_close(unit, y, ref_acts[unit])
  scale = float(np.abs(ref_logits).max())
  assert scale > 1.0, 'degenerate test: logits are all small'
  assert float(np.abs(y - ref_logits).max()) <= RTOL * scale, (np.abs(y - ref_logits).max(),
                                                                scale)


@pytest.mark.parametrize('arch,blocks,bottleneck', [('resnet18', (2, 2, 2, 2), False),
                                                    ('resnet50', (3, 4, 6, 3), True)])
def test_torchvision_resnet_safetensors_matches_reference(tmp_path, arch, blocks, bottleneck):
  rng = np.random.default_rng(0)
  stem, planes = widths(WIDTH)
  params = ref.random_torchvision_resnet(rng, blocks, bottleneck, planes, stem, num_classes=7)
  tensors = state_dict(params)
  for name in list(tensors):  # torch's integer buffer rides along and is ignored
    if name.endswith('running_var'):
      tensors[name.replace('running_var', 'num_batches_tracked')] = np.array(5, np.int64)
  src = tmp_path / f'{arch}.safetensors'
  safetensors_numpy.save_file(tensors, str(src))
  converted, stats, meta = convert.read_variables(src, 'safetensors', arch,
                                                  model_kwargs={'width': WIDTH})
  assert (meta.channel_order, meta.scale, meta.num_source_classes) == ('RGB', 1.0, 7)
  assert meta.mean == (0.485, 0.456, 0.406)
  np.testing.assert_array_equal(stats['stem']['bn1']['var'], params['bn1']['running_var'])
  np.testing.assert_array_equal(converted['layer2']['block0']['downsample_bn']['scale'],
                                params['layer2.0.downsample.1']['weight'])
  x = helpers.random_input(rng, 2, INPUT)
  ref_logits, ref_acts = ref.torchvision_resnet(params, x, blocks, bottleneck)
  _, units = get_model(arch, 7)
  assert_matches(arch, converted, stats, x, ref_logits, ref_acts, 7, units, width=WIDTH)


def test_keras_resnet50_matches_reference(tmp_path):
  """keras.applications ResNet50 (v1: stride on the 1x1 conv, conv biases, eps 1.001e-5,
  zero-padded max pool) loads into `resnet50_keras`; notop files convert without `fc`."""
  h5py = pytest.importorskip('h5py')
  rng = np.random.default_rng(1)
  stem, planes = widths(WIDTH)
  params = ref.random_keras_resnet50(rng, planes, stem, num_classes=5)
  src = write_keras_h5(h5py, tmp_path / 'resnet50.h5', params)
  converted, stats, meta = convert.read_variables(src, 'keras', 'resnet50_keras',
                                                  model_kwargs={'width': WIDTH})
  assert (meta.channel_order, meta.scale, meta.mean) == ('BGR', 255.0, (103.939, 116.779, 123.68))
  x = helpers.random_input(rng, 2, INPUT)
  ref_logits, ref_acts = ref.keras_resnet50(params, x)
  _, units = get_model('resnet50_keras', 5)
  assert_matches('resnet50_keras', converted, stats, x, ref_logits, ref_acts, 5, units,
                 width=WIDTH)
  # The v1.5 network is another function of the same numbers: the arch name keeps them apart.
  with pytest.raises(ValueError, match='resnet50_keras'):
    convert.read_variables(src, 'keras', 'resnet50', model_kwargs={'width': WIDTH})
  notop = write_keras_h5(h5py, tmp_path / 'notop.h5',
                         {k: v for k, v in params.items() if k != 'predictions'})
  converted, stats, meta = convert.read_variables(notop, 'keras', 'resnet50_keras',
                                                  model_kwargs={'width': WIDTH})
  assert 'fc' not in converted and meta.num_source_classes == 0
  # RadImageNet's files: same layout, its own input convention (caffe-mode / 255).
  _, _, rad = convert.read_variables(notop, 'keras', 'resnet50_keras', convention='radimagenet',
                                     model_kwargs={'width': WIDTH})
  assert (rad.channel_order, rad.scale, rad.std) == ('BGR', 255.0, (255.0, 255.0, 255.0))
  with pytest.raises(ValueError, match="--convention='radimagenet' is not known for "
                                       '--format=keras --arch=squeezenet1_1'):
    convert.read_variables(notop, 'keras', 'squeezenet1_1', convention='radimagenet')


def write_keras_h5(h5py, path, layers):
  """A Keras 2 `save_weights` file: root `layer_names`, each layer's `weight_names`."""
  with h5py.File(path, 'w') as f:
    f.attrs['backend'], f.attrs['keras_version'] = b'tensorflow', b'2.9.0'
    names = []
    for layer, arrays in layers.items():
      group = f.require_group(layer)
      weights = [f'{layer}/{k}:0' for k in arrays]
      group.attrs['weight_names'] = np.array([w.encode() for w in weights])
      for w, value in zip(weights, arrays.values()):
        group[w] = value
      names.append(layer.encode())
    f.attrs['layer_names'] = np.array(names)
  return path


def test_full_size_resnet18_conversion_and_artifact(tmp_path):
  """Real sizes (11.7M values): converted, written with its batch_stats, loaded back, and
  run on a small input against the reference."""
  rng = np.random.default_rng(2)
  params = ref.random_torchvision_resnet(rng)
  src = tmp_path / 'resnet18.safetensors'
  safetensors_numpy.save_file(state_dict(params), str(src))
  out = convert.convert(src, 'safetensors', 'resnet18', tmp_path / 'art')
  loaded, meta = load_artifact(out)
  stats = store.load_batch_stats(out)
  assert meta.num_source_classes == 1000 and (out / 'batch_stats').is_dir()
  assert loaded['layer4']['block0']['conv1']['kernel'].shape == (3, 3, 256, 512)
  np.testing.assert_array_equal(stats['layer3']['block1']['bn2']['mean'],
                                params['layer3.1.bn2']['running_mean'])
  x = helpers.random_input(rng, 1, 33)
  ref_logits, _ = ref.torchvision_resnet(params, x, (2, 2, 2, 2), False)
  logits = forward('resnet18', loaded, stats, x, 1000)
  scale = float(np.abs(ref_logits).max())
  assert float(np.abs(logits - ref_logits).max()) <= RTOL * scale


def test_artifact_without_batch_stats_loads_empty(tmp_path):
  params = {'conv1': {'kernel': np.ones((3, 3, 3, 4), np.float32),
                      'bias': np.zeros(4, np.float32)}}
  out = store.save_artifact(tmp_path / 'a', params, store.default_meta('alexnet'))
  assert not (out / 'batch_stats').exists() and store.load_batch_stats(out) == {}


def test_wrong_file_names_the_missing_layers(tmp_path):
  rng = np.random.default_rng(3)
  stem, planes = widths(WIDTH)
  params = ref.random_torchvision_resnet(rng, stem=stem, planes=planes, num_classes=3)
  del params['layer3.1.bn2']
  src = tmp_path / 'broken.safetensors'
  safetensors_numpy.save_file(state_dict(params), str(src))
  with pytest.raises(ValueError, match='layer3.1.bn2'):
    convert.read_variables(src, 'safetensors', 'resnet18', model_kwargs={'width': WIDTH})
  r50 = ref.random_torchvision_resnet(rng, (3, 4, 6, 3), True, planes, stem, num_classes=3)
  src50 = tmp_path / 'r50.safetensors'
  safetensors_numpy.save_file(state_dict(r50), str(src50))
  with pytest.raises(ValueError, match='--arch=resnet50'):
    convert.read_variables(src50, 'safetensors', 'resnet18', model_kwargs={'width': WIDTH})


# ---------------------------------------------------------------------------
# BatchNorm modes of the model
# ---------------------------------------------------------------------------


def _tiny(bn_train=None, **kwargs):
  model, units = get_model('resnet18', 3, width=WIDTH, bn_train=bn_train, **kwargs)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return model, units, variables


def test_units_params_and_labels():
  model, units, v = _tiny()
  assert units == ('stem', 'layer1', 'layer2', 'layer3', 'layer4', 'fc')
  assert set(v['params']) == set(units) and set(v['batch_stats']) == set(units[:-1])
  flat = traverse_util.flatten_dict(tuning.param_labels(v['params'], units, 'layer3'), sep='/')
  assert flat['layer2/block1/bn2/scale'] == 'frozen'
  assert flat['layer3/block0/downsample_bn/bias'] == 'body_bias'
  assert flat['fc/kernel'] == 'head_weight'


def test_frozen_units_use_running_statistics_trained_units_batch_statistics():
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3)) * 3 + 1
  model, units, v = _tiny(**bn_settings(('layer4', 'fc'), 'train', None))
  _, state = model.apply(v, x, train=True, mutable=['batch_stats'])
  new, old = state['batch_stats'], v['batch_stats']
  for unit in ('stem', 'layer1', 'layer2', 'layer3'):  # frozen: bit-identical statistics
    jax.tree.map(np.testing.assert_array_equal, new[unit], old[unit])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new['layer4'],
                                       old['layer4']))
  assert all(moved)
  # Frozen units are a fixed function in train mode: the trunk's output equals inference's.
  trunk = lambda train: model.apply(v, x, train=train, stop='layer3',  # noqa: E731
                                    mutable=['batch_stats'])[0]
  np.testing.assert_array_equal(trunk(True), trunk(False))
  # bn_mode=frozen: even trained units normalise with running statistics.
  frozen, _, _ = _tiny(**bn_settings(('layer4', 'fc'), 'frozen', None))
  y, state = frozen.apply(v, x, train=True, mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, state['batch_stats'], v['batch_stats'])
  np.testing.assert_array_equal(y, model.apply(v, x))


def test_batch_statistics_are_averaged_across_devices_under_pmap():
  """bn_axis_name='batch': two halves of a batch on two pmap shards normalise with the
  statistics of the whole batch (here two shards of one CPU device via vmap's axis_name)."""
  x = jax.random.normal(jax.random.key(2), (4, 32, 32, 3)) * 2
  model, _, v = _tiny(bn_axis_name='batch')
  plain, _, _ = _tiny()
  whole, s_whole = plain.apply(v, x, train=True, mutable=['batch_stats'])
  halves, s_halves = jax.jit(jax.vmap(
      lambda xs: model.apply(v, xs, train=True, mutable=['batch_stats']),
      axis_name='batch'))(x.reshape(2, 2, 32, 32, 3))
  np.testing.assert_allclose(halves.reshape(4, 3), whole, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(s_halves['batch_stats']['stem']['bn1']['mean'][0],
                             s_whole['batch_stats']['stem']['bn1']['mean'], rtol=1e-5, atol=1e-6)


def test_stages_compose():
  model, _, v = _tiny()
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  mid = model.apply(v, x, stop='layer2')
  np.testing.assert_allclose(model.apply(v, mid, start='layer3'), model.apply(v, x),
                             rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Training a ResNet arm (medft.train): frozen units, BatchNorm statistics, devices, cache
# ---------------------------------------------------------------------------

RUN_INPUT = 35


def _bn_source(folder, seed=5):
  """A tiny resnet18 artifact whose BatchNorm statistics are far from their init."""
  model, _ = get_model('resnet18', 2, width=WIDTH)
  v = jax.tree.map(np.asarray, model.init(jax.random.key(seed), jnp.zeros((1, 35, 35, 3))))
  rng = np.random.default_rng(seed)
  stats = jax.tree_util.tree_map_with_path(
      lambda p, a: (rng.uniform(0.5, 2.0, a.shape) if p[-1].key == 'var'
                    else rng.normal(0, 0.3, a.shape)).astype(np.float32), v['batch_stats'])
  store.save_artifact(folder, v['params'], store.default_meta('resnet18', (RUN_INPUT,) * 2),
                      batch_stats=stats)
  return str(folder), v['params'], stats


def _config(data_dir, depth, init='', steps=4, **changes):
  import tiny
  c = tiny.config(data_dir, steps=steps, depth=depth, init=init)
  c.arch, c.input_size = 'resnet18', RUN_INPUT
  c.task.eval_col_stride = 64  # the dense test scan is most of a tiny run's time
  c.train.eval_every = c.train.checkpoint_every = steps
  for key, value in changes.items():
    c.train[key] = value
  return c


def _latest(workdir):
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager((workdir / 'checkpoints' / 'latest').absolute())
  tree = mngr.restore(mngr.latest_step())
  mngr.close()
  return jax.tree.map(np.asarray, tree['state'])


@pytest.fixture(scope='module')
def layer4_runs(cimt_data_dir, tmp_path_factory):
  """Arm layer4 of a tiny ResNet-18 trained end to end (medft.train) from a source whose
  statistics are far from their init, without and with the frozen-trunk feature cache."""
  import medft
  tmp = tmp_path_factory.mktemp('resnet_runs')
  init, params, stats = _bn_source(tmp / 'src')
  runs = {}
  for name, cache in (('off', ''), ('on', 'memory')):
    results = medft.train(_config(cimt_data_dir, 'layer4', init, feature_cache=cache),
                          tmp / name)
    runs[name] = results, _latest(tmp / name), tmp / name
  return params, stats, runs


def test_middle_arm_freezes_params_and_statistics(layer4_runs):
  """Frozen units' params and BatchNorm statistics bit-identical, no optimizer slot for
  them; the trained unit's both moved."""
  params, stats, runs = layer4_runs
  results, state, _ = runs['off']
  assert np.isfinite(results['val_auc'])
  for unit in ('stem', 'layer1', 'layer2', 'layer3'):
    for got, want in ((state['params'][unit], params[unit]),
                      (state['batch_stats'][unit], stats[unit])):
      jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, err_msg=unit), got, want)
  for got, want in ((state['params']['layer4'], params['layer4']),
                    (state['batch_stats']['layer4'], stats['layer4'])):
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), got, want)))
  trained = sum(a.size for u in ('layer4', 'fc') for a in jax.tree.leaves(state['params'][u]))
  slots = sum(a.size for a in jax.tree.leaves(state['opt_state']) if a.ndim)
  assert slots == trained  # one momentum value per trained parameter, none for frozen ones


def test_cached_bn_arm_trains_like_the_uncached_arm(layer4_runs):
  """The frozen trunk of a BatchNorm network is deterministic (inference-mode statistics),
  so its features can be cached: the cached arm trains as the uncached one."""
  _, _, runs = layer4_runs
  off, on = runs['off'][1], runs['on'][1]
  for key in ('params', 'batch_stats'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 on[key], off[key])


def test_export_keeps_the_statistics(layer4_runs, tmp_path):
  """A run's exported weights hold its BatchNorm statistics beside its params."""
  import orbax.checkpoint as ocp

  from medft.weights import export
  run = layer4_runs[2]['off'][2]
  out = export.export(run, tmp_path / 'exported')
  mngr = ocp.CheckpointManager((run / 'checkpoints' / 'best').absolute())
  best = mngr.restore(mngr.latest_step())
  mngr.close()
  params, _ = load_artifact(out)
  stats = store.load_batch_stats(out)
  assert set(params) == {'stem', 'layer1', 'layer2', 'layer3', 'layer4', 'fc'}
  jax.tree.map(np.testing.assert_array_equal, stats, jax.tree.map(np.asarray,
                                                                  best['batch_stats']))


def test_bn_mode_picks_the_units_with_batch_statistics(cimt_data_dir):
  from medft import trainer
  config = _config(cimt_data_dir, 'layer3')
  model, _ = trainer.build_model(config)
  assert (model.bn_train, model.bn_axis_name) == (('layer3', 'layer4', 'fc'), 'batch')
  config.model.bn_mode = 'frozen'
  assert trainer.build_model(config)[0].bn_train == ()
  config.arch = 'alexnet'  # no BatchNorm: nothing to set
  assert not hasattr(trainer.build_model(config)[0], 'bn_train')


@pytest.mark.slow
def test_bn_network_on_four_devices_matches_one(cimt_data_dir, tmp_path, zygote):
  """Batch statistics averaged across devices: 4 devices x 2 images train as 1 x 8."""
  from test_train import _run
  init, _, _ = _bn_source(tmp_path / 'src')
  args = ('arch=resnet18', f'input_size={RUN_INPUT}', 'model.dropout=0', f'init={init}',
          'depth=layer2', 'train.eval_every=6', 'train.checkpoint_every=6',
          'task.eval_col_stride=64')
  _run(zygote, tmp_path / 'one', cimt_data_dir, 6, *args)
  _run(zygote, tmp_path / 'four', cimt_data_dir, 6, *args, devices=4)
  one, four = _latest(tmp_path / 'one'), _latest(tmp_path / 'four')
  for key in ('params', 'batch_stats'):
    flat_one = traverse_util.flatten_dict(one[key], sep='/')
    flat_four = traverse_util.flatten_dict(four[key], sep='/')
    assert flat_one.keys() == flat_four.keys()
    for k in flat_one:
      np.testing.assert_allclose(flat_four[k], flat_one[k], rtol=2e-4, atol=2e-5, err_msg=k)
