"""ViT-B/16: the network against independent NumPy forwards of timm and big_vision, its two
importers (timm safetensors, big_vision .npz), the position-embedding resize, and its units."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import reference_numpy as ref
from flax import traverse_util

from medft import tuning
from medft.errors import InputFileError
from medft.models import get_model, vit
from medft.weights import convert, load_artifact

safetensors_numpy = pytest.importorskip('safetensors.numpy')

WIDTH = 1 / 24             # hidden 32, 2 heads, MLP 128; 12 blocks, so every unit exists
HIDDEN, HEADS, MLP = vit.sizes(WIDTH)
SIDE = 32                  # a 2x2 patch grid: 5 tokens
CLASSES = 7


def _image(rng, n=2, side=SIDE):
  return rng.uniform(-1, 1, size=(n, side, side, 3)).astype(np.float32)


def _logits(params, x, side=SIDE):
  model, _ = get_model('vit_b16', CLASSES, width=WIDTH)
  return np.asarray(model.apply({'params': params}, jnp.asarray(x)))


def _assert_logits(actual, want):
  assert np.abs(want).max() > 1, 'random weights too weak to test anything'
  np.testing.assert_allclose(actual, want, rtol=1e-5, atol=1e-4)


def test_sizes_and_real_parameter_tree():
  assert (HIDDEN, HEADS, MLP) == (32, 2, 128)
  assert vit.sizes(1.0) == (768, 12, 3072)
  model, units = get_model('vit_b16', 1000)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))['params']
  assert units == ('embed', 'blocks0_2', 'blocks3_5', 'blocks6_8', 'blocks9_11', 'head')
  assert set(params) == set(units)
  flat = {k: v.shape for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  assert sum(int(np.prod(s)) for s in flat.values()) == 86_567_656  # timm vit_base_patch16_224
  assert flat['embed/patch/kernel'] == (16, 16, 3, 768)
  assert flat['embed/pos_embedding'] == (1, 197, 768)
  assert flat['blocks6_8/block7/attn/query/kernel'] == (768, 768)
  assert flat['blocks9_11/block11/mlp/fc1/kernel'] == (768, 3072)
  assert flat['blocks9_11/norm/scale'] == (768,) and flat['head/kernel'] == (768, 1000)
  # every parameter belongs to exactly one unit; depth blocks6_8 trains the last two groups
  labels = traverse_util.flatten_dict(tuning.param_labels(params, units, 'blocks6_8'), sep='/')
  trained = {k.split('/')[0] for k, v in labels.items() if v != tuning.FROZEN}
  assert trained == {'blocks6_8', 'blocks9_11', 'head'}


def test_stages_compose_to_the_whole_network():
  model, units = get_model('vit_b16', CLASSES, width=WIDTH)
  x = jnp.asarray(_image(np.random.default_rng(0)))
  v = model.init(jax.random.key(1), x)
  whole = model.apply(v, x)
  tokens = model.apply(v, x, stop='blocks3_5')
  assert tokens.shape == (2, 5, HIDDEN)
  cls = model.apply(v, tokens, start='blocks6_8', stop='blocks9_11')
  assert cls.shape == (2, HIDDEN)
  np.testing.assert_allclose(model.apply(v, cls, start='head'), whole, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope='module')
def timm_file(tmp_path_factory):
  """A reduced timm ViT state_dict in bfloat16 (as Hugging Face ships many), and its float
  values."""
  sd = ref.random_vit_timm(np.random.default_rng(0), HIDDEN, MLP, CLASSES, tokens=5)
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
  path = tmp_path_factory.mktemp('timm') / 'vit.safetensors'
  safetensors_numpy.save_file(bf16, str(path))
  return path, {k: v.astype(np.float32) for k, v in bf16.items()}


def test_timm_safetensors_matches_the_timm_forward(timm_file, tmp_path, capsys):
  src, sd = timm_file
  out = tmp_path / 'vit_timm'
  # through the command line's library function, with the reduced model for the fit check
  convert.convert(src, 'safetensors', 'vit_b16', out, model_kwargs={'width': WIDTH},
                  input_size=(SIDE, SIDE))
  params, meta = load_artifact(out)
  written = json.loads((out / 'meta.json').read_text())
  assert (written['mean'], written['std'], written['scale'], written['channel_order']) == (
      [0.5] * 3, [0.5] * 3, 1.0, 'RGB')
  assert meta.source_dtype == 'bfloat16' and meta.num_source_classes == CLASSES
  assert params['embed']['pos_embedding'].dtype == np.float32
  x = _image(np.random.default_rng(1))
  want = ref.vit_timm(sd, x.transpose(0, 3, 1, 2), HEADS)
  _assert_logits(_logits(params, x), want)


def test_big_vision_npz_matches_the_big_vision_forward(tmp_path, capsys):
  p = ref.random_vit_big_vision(np.random.default_rng(2), HIDDEN, HEADS, MLP, CLASSES, tokens=5)
  src = tmp_path / 'vit.npz'
  np.savez(src, **p)
  out = tmp_path / 'vit_npz'
  argv = [f'--src={src}', '--format=npz', '--arch=vit_b16', f'--out={out}',
          f'--input_size={SIDE}']
  # the CLI builds the real-size model for its check: the reduced file must be refused there
  assert convert.main(argv) == 1
  assert 'do not fit vit_b16' in capsys.readouterr().err and not out.exists()
  convert.convert(src, 'npz', 'vit_b16', out, model_kwargs={'width': WIDTH},
                  input_size=(SIDE, SIDE))
  params, meta = load_artifact(out)
  assert (meta.source_format, meta.mean, meta.std, meta.input_size) == (
      'npz', (0.5,) * 3, (0.5,) * 3, (SIDE, SIDE))
  x = _image(np.random.default_rng(3))
  _assert_logits(_logits(params, x), ref.vit_big_vision(p, x))


def test_npz_with_params_prefix_and_counters_reads_alike(tmp_path):
  p = ref.random_vit_big_vision(np.random.default_rng(4), HIDDEN, HEADS, MLP, CLASSES, tokens=5)
  a, b = tmp_path / 'a.npz', tmp_path / 'b.npz'
  np.savez(a, **p)
  np.savez(b, **{f'params/{k}': v for k, v in p.items()}, **{'params/step': np.int64(3)})
  kw = dict(model_kwargs={'width': WIDTH}, input_size=(SIDE, SIDE))
  pa, _ = convert.read_weights(a, 'npz', 'vit_b16', **kw)
  pb, _ = convert.read_weights(b, 'npz', 'vit_b16', **kw)
  jax.tree.map(np.testing.assert_array_equal, pa, pb)


def test_npz_refuses_pickles_and_foreign_files(tmp_path):
  objects = tmp_path / 'objects.npz'
  np.savez(objects, cls=np.array([{'a': 1}], dtype=object))
  with pytest.raises(InputFileError, match='never loads pickled'):
    convert.read_weights(objects, 'npz', 'vit_b16')
  bare = tmp_path / 'bare.npz'
  with bare.open('wb') as f:
    np.save(f, np.zeros(3))
  with pytest.raises(InputFileError, match='no named arrays'):
    convert.read_weights(bare, 'npz', 'vit_b16')
  other = tmp_path / 'other.npz'
  np.savez(other, **{'conv1/kernel': np.zeros((3, 3, 3, 4), np.float32)})
  with pytest.raises(InputFileError, match='not a npz file of vit_b16.*embedding'):
    convert.read_weights(other, 'npz', 'vit_b16')


def test_position_grid_is_resized_bilinearly(timm_file, tmp_path):
  """A 2x2-grid source studied at 48 px (3x3 grid): the position embedding is resized like
  torch's bilinear interpolate; the class token's entry and all other weights are kept."""
  src, sd = timm_file
  params, meta = convert.read_weights(src, 'safetensors', 'vit_b16',
                                      model_kwargs={'width': WIDTH}, input_size=(48, 48))
  pos = params['embed']['pos_embedding']
  assert pos.shape == (1, 10, HIDDEN) and meta.input_size == (48, 48)
  np.testing.assert_array_equal(pos[0, 0], sd['pos_embed'][0, 0])
  want = ref.bilinear_resize(sd['pos_embed'][0, 1:].reshape(2, 2, HIDDEN), 3, 3)
  np.testing.assert_allclose(pos[0, 1:].reshape(3, 3, HIDDEN), want, rtol=1e-6, atol=1e-6)
  # downsizing too (5x5 -> 2x2), against the same reference
  big = np.random.default_rng(5).normal(size=(1, 26, 4)).astype(np.float32)
  small = vit.resize_grid(big, (2, 2))
  np.testing.assert_allclose(small[0, 1:].reshape(2, 2, 4),
                             ref.bilinear_resize(big[0, 1:].reshape(5, 5, 4), 2, 2),
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(InputFileError, match='not a square grid'):
    vit.resize_grid(np.zeros((1, 7, 4)), (2, 2))
  # the resized weights run at the new size
  assert _logits(params, _image(np.random.default_rng(6), side=48)).shape == (2, CLASSES)
  # without --input_size: the source's own size, from its grid (2 x 16), weights as they are
  same, meta = convert.read_weights(src, 'safetensors', 'vit_b16',
                                    model_kwargs={'width': WIDTH})
  assert meta.input_size == (SIDE, SIDE)
  np.testing.assert_array_equal(same['embed']['pos_embedding'], sd['pos_embed'])


def test_convert_table_names_every_timm_tensor_once():
  """The timm table reads each vit_base_patch16_224 tensor name (2 + 12 x 12 + 6 = 152 names
  with the head) and nothing else."""
  rows = convert.TABLES['safetensors']['vit_b16']
  names = {r.source for r in rows}
  assert len(names) == 3 + 12 * 6 + 2
  assert {'cls_token', 'pos_embed', 'blocks.11.attn.qkv', 'norm', 'head'} <= names
  assert len(convert.TABLES['npz']['vit_b16']) == 3 + 12 * 8 + 2


@pytest.mark.slow  # compiling the 12 blocks' train and predict steps: ~50 s on 2 busy cores
def test_converted_timm_weights_fine_tune_with_layer_decay_end_to_end(timm_file, cimt_data_dir,
                                                                      tmp_path):
  """The real path: a timm file converted, then one arm of the tiny CIMT study through
  `medft.train` (depth blocks6_8, optim.layer_decay=0.65): units below the depth keep the
  file's values bit for bit, the others train, and the run writes its results."""
  import tiny

  import medft
  src, _ = timm_file
  init = convert.convert(src, 'safetensors', 'vit_b16', tmp_path / 'w',
                         model_kwargs={'width': WIDTH}, input_size=(SIDE, SIDE))
  source, _ = load_artifact(init)
  config = tiny.config(cimt_data_dir, steps=4, depth='blocks6_8', init=str(init))
  config.arch, config.model.width, config.model.dropout = 'vit_b16', WIDTH, 0.0
  config.optim.layer_decay = 0.65
  config.train.eval_every = 4
  results = medft.train(config, tmp_path / 'run')
  assert np.isfinite(results['val_auc'])
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager((tmp_path / 'run' / 'checkpoints' / 'latest').absolute())
  params = mngr.restore(mngr.latest_step())['state']['params']
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, params), sep='/')
  before = traverse_util.flatten_dict(source, sep='/')
  for path, value in before.items():
    unit = path.split('/')[0]
    if unit in ('embed', 'blocks0_2', 'blocks3_5'):
      assert flat[path].tobytes() == value.tobytes(), f'{path} must stay frozen'
  assert not np.array_equal(flat['blocks6_8/block6/attn/query/kernel'],
                            before['blocks6_8/block6/attn/query/kernel'])
  assert not np.array_equal(flat['blocks9_11/norm/scale'], before['blocks9_11/norm/scale'])
