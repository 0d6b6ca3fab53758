"""Exporting a run's fine-tuned weights (medft.weights.export), on one tiny real run.

The run fine-tunes fc7-fc8 of a torchvision-layout AlexNet from a source artifact with an
input convention of its own (BGR, its mean/std), so the export must carry that convention.
"""

import json
import shutil

import jax
import numpy as np
import pytest
import tiny
from flax import traverse_util

import medft
from medft import trainer, validate
from medft.errors import ConfigError, InputFileError, MissingInputError, NotOursError
from medft.models import get_model
from medft.weights import convert, export, store

ARCH = 'alexnet_torchvision'
CONVENTION = dict(channel_order='BGR', scale=1.0, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3),
                  input_size=(67, 67))


def _config(data_dir, init, steps=10):
  c = tiny.config(data_dir, steps=steps, depth='fc7', init=str(init))
  c.arch = ARCH
  c.task.eval_col_stride = 32  # fewer test columns: this test compares them, not their number
  return c


@pytest.fixture(scope='module')
def run(tmp_path_factory, cimt_data_dir):
  """(workdir, config, results) of a finished tiny fine-tuning run."""
  root = tmp_path_factory.mktemp('export')
  source = _random_params(ARCH, 1000)
  store.save_artifact(root / 'source', source, store.Meta(
      arch=ARCH, source_format='torch', num_source_classes=1000, **CONVENTION))
  config = _config(cimt_data_dir, root / 'source')
  results = medft.train(config, root / 'run')
  return root / 'run', config, results


def _random_params(arch, classes, seed=0):
  """He-scaled random parameters of a width-0.125 network at 67x67 (shapes from
  jax.eval_shape: no init computation, which is slow on a loaded machine)."""
  model, _ = get_model(arch, classes, width=0.125)
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 67, 67, 3)))['params']
  rng = np.random.default_rng(seed)

  def draw(path, s):
    if path[-1].key == 'bias':
      return np.zeros(s.shape, np.float32)
    std = np.sqrt(2 / np.prod(s.shape[:-1]))
    return (rng.standard_normal(s.shape) * std).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _flat(params):
  return traverse_util.flatten_dict(params, sep='/')


def test_export_as_init_with_head_kept_reproduces_the_test_scores(run, tmp_path):
  workdir, config, results = run
  out = export.export(workdir, tmp_path / 'exported')
  meta = json.loads((out / 'meta.json').read_text())
  for key, value in CONVENTION.items():  # the run's convention (from its init=), not medft's
    assert meta[key] == list(value) if isinstance(value, tuple) else meta[key] == value, key
  assert meta['num_source_classes'] == config.num_classes == 3
  prov = meta['provenance']
  assert prov['run'] == str(workdir.absolute()) and prov['which'] == 'best'
  assert prov['step'] == results['best_step'] and prov['arm'] == 'fc7'
  assert prov['dataset'] == config.data.name and prov['init'] == config.init
  assert prov['init_source'] == 'torch' and prov['medft'] == medft.__version__

  again = config.copy_and_resolve_references()
  again.init, again.model.keep_head, again.train.steps = str(out), True, 0
  evaluated = medft.train(again, tmp_path / 'evaluated')
  assert evaluated['steps'] == 0
  per_image = results['test']['per_image']
  assert len(per_image) > 1 and len({json.dumps(r, sort_keys=True) for r in per_image}) > 1
  assert evaluated['test'] == results['test']  # every per-image score, bit for bit (JSON)
  assert evaluated['val_auc'] == results['val_auc']


def test_safetensors_export_converts_back_to_the_same_parameters(run, tmp_path):
  workdir, _, results = run
  file = export.export(workdir, tmp_path / 'model.safetensors', format='safetensors')
  from safetensors import safe_open
  with safe_open(str(file), 'np') as f:
    assert 'classifier.6.weight' in f.keys() and 'features.0.weight' in f.keys()
    assert f.get_tensor('classifier.6.weight').shape[0] == 3  # torch layout (out, in)
  back = convert.convert(file, 'safetensors', ARCH, tmp_path / 'back',
                         model_kwargs={'width': 0.125}, input_size=(67, 67))
  got, _ = store.load_artifact(back)
  want, step = export.read_checkpoint(workdir, 'best')
  assert step == results['best_step']
  want, got = _flat(want), _flat(got)
  assert sorted(got) == sorted(want)
  for key in want:
    assert got[key].dtype == want[key].dtype and got[key].tobytes() == want[key].tobytes(), key


def test_caffe_alexnet_has_no_safetensors_naming(run, tmp_path):
  workdir, _, _ = run
  caffe = tmp_path / 'caffe_run'
  shutil.copytree(workdir, caffe)
  config = json.loads((caffe / 'config.json').read_text())
  (caffe / 'config.json').write_text(json.dumps({**config, 'arch': 'alexnet'}))
  with pytest.raises(ConfigError, match=r'alexnet cannot be written in torch.*--format=medft'):
    export.export(caffe, tmp_path / 'm.safetensors', format='safetensors')
  assert not (tmp_path / 'm.safetensors').exists()


def test_unfinished_run_needs_which_latest(run, tmp_path):
  workdir, _, results = run
  unfinished = tmp_path / 'unfinished'
  shutil.copytree(workdir, unfinished)
  (unfinished / 'results.json').unlink()  # what a stopped run looks like
  with pytest.raises(MissingInputError, match=r'not finished \(no results.json\).*--which=latest'):
    export.export(unfinished, tmp_path / 'out')
  assert not (tmp_path / 'out').exists()
  out = export.export(unfinished, tmp_path / 'out', which='latest')
  prov = json.loads((out / 'meta.json').read_text())['provenance']
  assert prov['which'] == 'latest' and not prov['finished'] and prov['step'] == results['steps']
  latest, _ = export.read_checkpoint(unfinished, 'latest')
  got, _ = store.load_artifact(out)
  assert all(_flat(got)[k].tobytes() == v.tobytes() for k, v in _flat(latest).items())


def test_bad_folders_are_refused_and_nothing_is_written(run, tmp_path, capsys):
  workdir, _, _ = run
  with pytest.raises(MissingInputError, match='no such folder'):
    export.export(tmp_path / 'nowhere', tmp_path / 'out')
  other = tmp_path / 'other'
  other.mkdir()
  (other / 'notes.txt').write_text('mine')
  with pytest.raises(InputFileError, match='is not a medft run folder'):
    export.export(other, tmp_path / 'out')
  assert not (tmp_path / 'out').exists()
  # An --out that exists: refused without --overwrite; with it only if medft wrote it.
  for overwrite in (False, True):
    with pytest.raises(NotOursError, match=f'--out={other}'):
      export.export(workdir, other, overwrite=overwrite)
  assert [p.name for p in other.iterdir()] == ['notes.txt']
  theirs = tmp_path / 'theirs.safetensors'
  theirs.write_bytes(b'not ours')
  with pytest.raises(NotOursError, match='not a .safetensors file medft exported'):
    export.export(workdir, theirs, format='safetensors', overwrite=True)
  assert theirs.read_bytes() == b'not ours'
  # The command line: one line of error, exit status 1, no traceback.
  assert export.main([f'--workdir={other}', f'--out={tmp_path / "out2"}']) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: --workdir=') and 'Traceback' not in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ['other', 'theirs.safetensors']
  # An export of medft's own is replaced with --overwrite (the command line this time).
  first = export.export(workdir, tmp_path / 'mine')
  assert export.main([f'--workdir={workdir}', f'--out={first}', '--which=latest',
                      '--overwrite']) == 0
  assert capsys.readouterr().out.strip() == str(first)
  assert json.loads((first / 'meta.json').read_text())['provenance']['which'] == 'latest'


def test_keep_head_is_checked(run, tmp_path, cimt_data_dir):
  _, config, _ = run
  bad = config.copy_and_resolve_references()
  bad.model.keep_head = True
  for field, value, message in (('init', '', 'only with init='),
                                ('depth', 'scratch', 'other than scratch')):
    c = bad.copy_and_resolve_references()
    c[field] = value
    with pytest.raises(ConfigError, match=f'model.keep_head=True is invalid.*{message}'):
      validate.check_config(c, 'train')
  with pytest.raises(ConfigError, match='model.keep_head=True is invalid.*sweep'):
    validate.check_config(bad, 'sweep')
  no_steps = config.copy_and_resolve_references()
  no_steps.train.steps = 0
  with pytest.raises(ConfigError, match='would not train at all'):
    validate.check_config(no_steps, 'train')
  bad.train.steps = 0
  validate.check_config(bad, 'train')  # evaluation of init= with its head
  # The kept head must have the task's classes (the source artifact has 1000).
  model, units = trainer.build_model(bad)
  with pytest.raises(ConfigError, match=r'keeps the 1000-class head of init=.*num_classes=3'):
    trainer.initial_params(bad, model, units)


def test_meta_json_without_provenance_still_loads():
  meta = store.Meta.from_json({'arch': 'alexnet', 'mean': [1, 2, 3]})
  assert meta.provenance == {} and meta.mean == (1, 2, 3)
  with pytest.raises(InputFileError, match='provenance'):
    store.Meta.from_json({'arch': 'alexnet', 'provenance': 'x'})


@pytest.mark.parametrize('arch', ['alexnet_torchvision', 'squeezenet1_1'])
def test_torch_table_inverted_reads_back_exactly(arch):
  params = _random_params(arch, 5)
  tensors = convert.to_source(params, 'torch', arch)
  from medft.weights.torch import group_by_layer
  back = _flat(convert.to_flax(group_by_layer(tensors, 'x'), 'torch', arch, 'x'))
  assert sorted(back) == sorted(_flat(params))
  assert all(back[k].tobytes() == v.tobytes() for k, v in _flat(params).items())
