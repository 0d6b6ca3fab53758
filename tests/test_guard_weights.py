"""The converter under issue 15: bfloat16 safetensors convert (and say so in meta.json), and
`--overwrite` replaces only a folder that medft's own marker says it wrote."""

import json

import ml_dtypes
import numpy as np
import pytest
import reference_numpy as ref
import weights_helpers as helpers
from flax import traverse_util

from medft import errors
from medft.weights import convert, load_artifact, store

safetensors_numpy = pytest.importorskip('safetensors.numpy')

WIDTH = 0.25
INPUT = 127


def _state_dict(seed=0, num_classes=6):
  rng = np.random.default_rng(seed)
  conv, hidden = helpers.channels('alexnet_torchvision', WIDTH)
  params = ref.random_torchvision_alexnet(rng, conv, hidden, num_classes)
  tensors = {f'{layer}.{key}': value for layer, d in params.items() for key, value in d.items()}
  return tensors, helpers.random_input(rng, 2, INPUT)


def _convert(src, out, **kwargs):
  return convert.convert(src, 'safetensors', 'alexnet_torchvision', out,
                         model_kwargs={'width': WIDTH}, **kwargs)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """The same random weights as float32, as bfloat16, and as float32 rounded through bf16."""
  base = tmp_path_factory.mktemp('bf16')
  tensors, x = _state_dict()
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
  rounded = {k: v.astype(np.float32) for k, v in bf16.items()}
  paths = {}
  for name, content in (('float32', tensors), ('bfloat16', bf16), ('rounded', rounded)):
    paths[name] = base / f'{name}.safetensors'
    safetensors_numpy.save_file(content, str(paths[name]))
  return paths, x, base


def test_bf16_safetensors_convert_and_match_the_float32_logits(files):
  import jax
  paths, x, base = files
  assert not np.issubdtype(ml_dtypes.bfloat16, np.floating) and jax  # the trap, JAX loaded
  outs = {name: _convert(path, base / f'out_{name}') for name, path in paths.items()}
  meta = {name: json.loads((out / 'meta.json').read_text()) for name, out in outs.items()}
  assert meta['bfloat16']['source_dtype'] == 'bfloat16'
  assert meta['float32']['source_dtype'] == meta['rounded']['source_dtype'] == 'float32'
  params = {name: load_artifact(out)[0] for name, out in outs.items()}
  # bf16 -> float32 is exact: the converted bf16 file equals the float32 copy of its values.
  for path, value in traverse_util.flatten_dict(params['rounded']).items():
    converted = traverse_util.flatten_dict(params['bfloat16'])[path]
    assert converted.dtype == np.float32
    np.testing.assert_array_equal(converted, value, err_msg=str(path))
  logits = {name: helpers.flax_forward('alexnet_torchvision', p, x, 6, width=WIDTH)[0]
            for name, p in params.items()}
  scale = float(np.abs(logits['float32']).max())
  diff = float(np.abs(logits['bfloat16'] - logits['float32']).max())
  assert scale > 0.05, 'degenerate test: logits are all ~0'
  # bf16 keeps 8 significant bits (relative rounding <= 2^-9 per weight); through eight
  # layers the logits agree to about 1% of their scale, and not exactly (rounding happened).
  assert 0 < diff <= 2 ** -6 * scale, (diff, scale)


def test_overwrite_replaces_only_a_medft_artifact(files, tmp_path, capsys):
  paths, _, _ = files
  out = _convert(paths['float32'], tmp_path / 'ours')
  assert json.loads((out / 'meta.json').read_text())['written_by'] == 'medft'
  _convert(paths['bfloat16'], out, overwrite=True)  # medft's own artifact: replaced
  assert json.loads((out / 'meta.json').read_text())['source_dtype'] == 'bfloat16'

  foreign = tmp_path / 'photos'
  foreign.mkdir()
  (foreign / 'holiday.jpg').write_bytes(b'not ours')
  fake = tmp_path / 'fake'
  (fake / 'params').mkdir(parents=True)
  (fake / 'meta.json').write_text('{"arch": "alexnet"}')  # meta.json without medft's marker
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('a file')
  for target in (foreign, fake, a_file):
    before = {p: p.read_bytes() for p in target.rglob('*') if p.is_file()} if \
        target.is_dir() else target.read_bytes()
    with pytest.raises(errors.NotOursError, match=f'--out={target} exists and is not a medft'):
      _convert(paths['float32'], target, overwrite=True)
    argv = [f'--src={paths["float32"]}', '--format=safetensors', '--arch=alexnet_torchvision',
            f'--out={target}', '--overwrite']
    assert convert.main(argv) == 1
    assert f'--out={target} exists and is not a medft weights folder' in capsys.readouterr().err
    after = {p: p.read_bytes() for p in target.rglob('*') if p.is_file()} if \
        target.is_dir() else target.read_bytes()
    assert after == before
  # The library's own writer (also used by pretraining exports) applies the same rule.
  with pytest.raises(errors.NotOursError):
    store.save_artifact(foreign, load_artifact(out)[0], store.default_meta('alexnet'),
                        overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['fake', 'notes.txt', 'ours', 'photos']
