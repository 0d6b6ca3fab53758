"""`python -m medft.weights.convert`: the command line, the artifact it writes, and its errors."""

import json

import numpy as np
import pytest
import reference_numpy as ref

from medft.weights import convert, load_artifact

safetensors_numpy = pytest.importorskip('safetensors.numpy')


@pytest.fixture(scope='module')
def squeezenet_file(tmp_path_factory):
  """A full-size torchvision squeezenet1_1 state_dict with random weights (1.2M values)."""
  params = ref.random_squeezenet1_1(np.random.default_rng(0))
  tensors = {f'{ref.torchvision_squeezenet_name(layer)}.{key}': value
             for layer, d in params.items() for key, value in d.items()}
  path = tmp_path_factory.mktemp('src') / 'squeezenet1_1.safetensors'
  safetensors_numpy.save_file(tensors, str(path))
  return path, params


def _argv(src, out, fmt='safetensors', arch='squeezenet1_1'):
  return [f'--src={src}', f'--format={fmt}', f'--arch={arch}', f'--out={out}']


def test_cli_writes_an_artifact(squeezenet_file, tmp_path, capsys):
  src, params = squeezenet_file
  out = tmp_path / 'converted'
  assert convert.main(_argv(src, out)) == 0
  assert capsys.readouterr().out.strip() == str(out.absolute())
  loaded, meta = load_artifact(out)
  assert json.loads((out / 'meta.json').read_text())['source_format'] == 'safetensors'
  assert (meta.arch, meta.channel_order, meta.num_source_classes) == ('squeezenet1_1', 'RGB',
                                                                      1000)
  np.testing.assert_array_equal(loaded['fire4']['expand3x3']['kernel'],
                                params['fire4/expand3x3']['weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(loaded['conv10']['bias'], params['conv10']['bias'])


def test_cli_refuses_existing_out(squeezenet_file, tmp_path, capsys):
  out = tmp_path / 'taken'
  out.mkdir()
  assert convert.main(_argv(squeezenet_file[0], out)) == 1
  assert f'--out={out} already exists' in capsys.readouterr().err
  with pytest.raises(FileExistsError, match='already exists'):
    convert.convert(squeezenet_file[0], 'safetensors', 'squeezenet1_1', out)


def test_cli_reports_missing_source(tmp_path, capsys):
  assert convert.main(_argv(tmp_path / 'nope.safetensors', tmp_path / 'out')) == 1
  assert 'nope.safetensors: no such file' in capsys.readouterr().err
  assert not (tmp_path / 'out').exists()


def test_unknown_format_and_arch(squeezenet_file, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    convert.main(_argv(squeezenet_file[0], tmp_path / 'out', fmt='onnx'))
  assert exit_info.value.code == 2
  assert "invalid choice: 'onnx'" in capsys.readouterr().err
  with pytest.raises(ValueError, match=r"--format='onnx' is unknown; choose one of caffe, torch, "
                                       r'safetensors, keras'):
    convert.convert(squeezenet_file[0], 'onnx', 'squeezenet1_1', tmp_path / 'out')
  with pytest.raises(ValueError, match=r"--arch='vgg16' is unknown"):
    convert.convert(squeezenet_file[0], 'safetensors', 'vgg16', tmp_path / 'out')


def test_cli_reports_wrong_architecture(squeezenet_file, tmp_path, capsys):
  assert convert.main(_argv(squeezenet_file[0], tmp_path / 'out',
                            arch='alexnet_torchvision')) == 1
  err = capsys.readouterr().err
  assert 'squeezenet1_1.safetensors: not a safetensors file of alexnet_torchvision' in err
  assert 'looks like squeezenet1_1: pass --arch=squeezenet1_1' in err


def test_every_table_row_has_a_known_layout():
  """The tables are explicit; every row must map to a tuning unit of its architecture."""
  from medft.models import ARCHS
  for fmt, tables in convert.TABLES.items():
    for arch, rows in tables.items():
      units = ARCHS[arch][1]
      assert [r.unit.split('/')[0] for r in rows][0] == units[0]
      assert {r.unit.split('/')[0] for r in rows} == set(units), (fmt, arch)
      assert len({r.source for r in rows}) == len(rows), (fmt, arch)
