"""Damaged and arbitrary files: every reader either reads them or raises a ValueError that
names the file; nothing else escapes (no crash, no other exception type)."""

import caffe_files
import numpy as np
import pytest
import reference_numpy as ref

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medft.weights import caffe, keras, safetensors  # noqa: E402

READERS = {'caffe': caffe, 'keras': keras, 'safetensors': safetensors}


def _valid_files(directory):
  """One small valid file per format (random SqueezeNet-layout weights, width 1/16)."""
  params = caffe_files.small_squeezenet()
  files = {'caffe': caffe_files.write_convolution_net(directory / 'net.caffemodel', params)}
  import h5py
  files['keras'] = directory / 'net.h5'
  with h5py.File(files['keras'], 'w') as f:
    for name, p in params.items():
      f[f'{name}/kernel:0'] = p['weight'].transpose(2, 3, 1, 0)
      f[f'{name}/bias:0'] = p['bias']
  from safetensors.numpy import save_file
  files['safetensors'] = directory / 'net.safetensors'
  save_file({f'{ref.torchvision_squeezenet_name(k)}.{key}': v for k, d in params.items()
             for key, v in d.items()}, str(files['safetensors']))
  return files


@pytest.fixture(scope='module')
def valid_files(tmp_path_factory):
  return _valid_files(tmp_path_factory.mktemp('valid'))


def _read_or_value_error(reader, path):
  try:
    layers = reader.read_layers(path)
  except ValueError as e:
    assert str(path) in str(e)
    return None
  assert all(isinstance(v, np.ndarray) for d in layers.values() for v in d.values())
  return layers


@pytest.mark.parametrize('fmt', sorted(READERS))
def test_valid_files_read(valid_files, fmt):
  assert _read_or_value_error(READERS[fmt], valid_files[fmt])


@pytest.mark.parametrize('fmt', sorted(READERS))
@settings(max_examples=40, deadline=None)
@given(fraction=st.floats(0.0, 0.999))
def test_truncated_files(valid_files, tmp_path_factory, fmt, fraction):
  data = valid_files[fmt].read_bytes()
  path = tmp_path_factory.mktemp('cut') / valid_files[fmt].name
  path.write_bytes(data[:int(len(data) * fraction)])
  _read_or_value_error(READERS[fmt], path)


@pytest.mark.parametrize('fmt', sorted(READERS))
@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=600), flips=st.lists(st.integers(0, 10**6),
                                                                   max_size=8))
def test_arbitrary_and_corrupted_bytes(valid_files, tmp_path_factory, fmt, data, flips):
  directory = tmp_path_factory.mktemp('junk')
  junk = directory / f'junk.{fmt}'
  junk.write_bytes(data)
  _read_or_value_error(READERS[fmt], junk)
  corrupted = bytearray(valid_files[fmt].read_bytes())
  for position in flips:
    corrupted[position % len(corrupted)] ^= 0xA5
  path = directory / valid_files[fmt].name
  path.write_bytes(bytes(corrupted))
  _read_or_value_error(READERS[fmt], path)
