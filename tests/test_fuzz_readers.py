"""Weights readers on mutated valid files: inflated size fields, structured mutations, pickled code.

`test_weights_fuzz.py` flips random bytes and truncates; this file mutates what a damaged or
hostile file would lie about: lengths and shapes in headers (a safetensors header claiming a
2^40-byte tensor, a caffemodel blob claiming billions of floats, an HDF5 dataset declaring
terabytes of fill value or keeping its values in /dev/zero), and pickled code in `.pth` files.
Every outcome must be a clean read or a ValueError / FileNotFoundError naming the file: no
other exception, no hang (hypothesis deadline), no memory blow-up (peak RSS growth), and no
code from a file ever runs.

The inflated-size files are read in a fresh subprocess (`python tests/test_fuzz_readers.py
DIR`), whose peak RSS starts small, so that an allocation the size of a claimed field shows.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for the subprocess; pytest's pythonpath has it already

from medft.third_party.caffe import schema  # noqa: E402
from medft.weights import caffe, keras, safetensors  # noqa: E402

READERS = {'caffe': caffe, 'safetensors': safetensors, 'keras': keras}
# Peak RSS may grow this much while reading one file (the valid files are a few kB).
MAX_GROWTH_MB = 64


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _outcome(fmt: str, path: Path):
  """The layers read from `path`, or None after a clean error that names it."""
  try:
    layers = READERS[fmt].read_layers(path)
  except (ValueError, FileNotFoundError) as e:
    assert str(path) in str(e), f'{type(e).__name__} does not name {path}: {e}'
    return None
  assert layers and all(isinstance(v, np.ndarray) and v.dtype == np.float32
                        for d in layers.values() for v in d.values()), layers
  return layers


# ---- valid files -----------------------------------------------------------------------------


def _weights() -> dict[str, dict[str, np.ndarray]]:
  """A few conv layers in (out, in, kh, kw) layout."""
  rng = np.random.default_rng(0)
  shapes = {'conv1': (4, 3, 3, 3), 'fire2/squeeze1x1': (2, 4, 1, 1), 'conv10': (3, 2, 1, 1)}
  return {name: {'weight': rng.standard_normal(s).astype(np.float32),
                 'bias': rng.standard_normal(s[0]).astype(np.float32)}
          for name, s in shapes.items()}


def _caffe_net() -> schema.NetParameter:
  net = schema.NetParameter()
  for name, p in _weights().items():
    layer = net.layer.add(name=name, type='Convolution')
    for key in ('weight', 'bias'):
      blob = layer.blobs.add()
      blob.shape.dim.extend(p[key].shape)
      blob.data.extend(p[key].ravel().tolist())
  return net


def _safetensors_bytes() -> bytes:
  from safetensors.numpy import save
  return save({f'{layer.replace("/", "_")}.{k}': v for layer, d in _weights().items()
               for k, v in d.items()})


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
  n = struct.unpack('<Q', data[:8])[0]
  return json.loads(data[8:8 + n]), data[8 + n:]


def _join_safetensors(header: dict, body: bytes, length: int | None = None) -> bytes:
  raw = json.dumps(header).encode()
  return struct.pack('<Q', len(raw) if length is None else length) + raw + body


def _write_keras(path: Path, override=None) -> Path:
  """Keras 2 `save_weights` layout (`layer_names` / `weight_names` attributes); `override`
  (group, name) creates that dataset instead of the valid one."""
  import h5py
  with h5py.File(path, 'w') as f:
    names = list(_weights())
    f.attrs['layer_names'] = [n.encode() for n in names]
    for name, p in _weights().items():
      group = f.require_group(name)
      group.attrs['weight_names'] = [f'{name}/kernel:0'.encode(), f'{name}/bias:0'.encode()]
      for key, value in (('kernel:0', p['weight'].transpose(2, 3, 1, 0)), ('bias:0', p['bias'])):
        if override and (name, key) == override[:2]:
          override[2](group, f'{name}/{key}')
        else:
          group[f'{name}/{key}'] = value
  return path


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
    n >>= 7
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes, length: int | None = None) -> bytes:
  """A length-delimited protobuf field whose length prefix may lie."""
  return (_varint(number << 3 | 2) + _varint(len(payload) if length is None else length)
          + payload)


# ---- inflated size fields, read in a fresh process --------------------------------------------


def _inflated_files(folder: Path) -> dict[str, tuple[str, Path]]:
  """name -> (format, file) for every inflated-size case."""
  import h5py
  cases: dict[str, tuple[str, bytes | Path]] = {}
  header, body = _split_safetensors(_safetensors_bytes())
  valid = _join_safetensors(header, body)
  first = next(iter(sorted(k for k in header if k != '__metadata__')))

  def tensor(**change) -> bytes:
    h = json.loads(json.dumps(header))
    h[first].update(change)
    return _join_safetensors(h, body)

  cases['st_header_length_2^62'] = 'safetensors', struct.pack('<Q', 2**62) + valid[8:]
  cases['st_header_length_2^40'] = 'safetensors', struct.pack('<Q', 2**40) + valid[8:]
  cases['st_header_length_past_end'] = 'safetensors', struct.pack('<Q', len(valid) - 7) + valid[8:]
  cases['st_tensor_2^40_bytes'] = 'safetensors', tensor(shape=[2**18, 2**20],
                                                        data_offsets=[0, 2**40])
  cases['st_shape_overflows_u64'] = 'safetensors', tensor(shape=[2**62, 2**62, 16])
  cases['st_shape_larger_than_offsets'] = 'safetensors', tensor(shape=[2**30, 4])
  cases['st_negative_offset'] = 'safetensors', tensor(data_offsets=[-8, 8])

  net = _caffe_net()
  huge = schema.NetParameter()
  huge.CopyFrom(net)
  del huge.layer[0].blobs[0].shape.dim[:]
  huge.layer[0].blobs[0].shape.dim.extend([2**31, 2**31, 4])
  cases['caffe_blob_claims_2^64_floats'] = 'caffe', huge.SerializeToString()
  legacy = schema.NetParameter()
  legacy.CopyFrom(net)
  blob = legacy.layer[0].blobs[0]
  blob.ClearField('shape')
  blob.num, blob.channels, blob.height, blob.width = 2**30, 2**30, 1, 1
  cases['caffe_legacy_dims_2^60'] = 'caffe', legacy.SerializeToString()
  negative = schema.NetParameter()
  negative.CopyFrom(net)
  negative.layer[0].blobs[1].shape.dim[0] = -(2**40)
  cases['caffe_negative_dim'] = 'caffe', negative.SerializeToString()
  # NetParameter.layer (100) > LayerParameter.blobs (7) > BlobProto.data (5, packed floats).
  floats = _field(5, b'\0' * 16, length=2**31 - 1)
  cases['caffe_packed_data_length_2^31'] = 'caffe', net.SerializeToString() + _field(
      100, _field(7, floats))
  cases['caffe_layer_length_2^40'] = 'caffe', net.SerializeToString() + _field(
      100, b'\0' * 8, length=2**40)

  def dataset(**kwargs):
    return lambda group, name: group.create_dataset(name, **kwargs)

  raw = folder / 'values.bin'
  raw.write_bytes(np.arange(108, dtype=np.float32).tobytes())
  source = folder / 'source.h5'
  with h5py.File(source, 'w') as f:
    f['x'] = np.ones((3, 3, 3, 4), np.float32)
  layout = h5py.VirtualLayout(shape=(3, 3, 3, 4), dtype='f4')
  layout[:] = h5py.VirtualSource(str(source), 'x', shape=(3, 3, 3, 4))
  for name, make in {
      'h5_fill_value_8TiB': dataset(shape=(2**20, 2**20, 2), dtype='f4', chunks=(16, 16, 2)),
      'h5_fill_value_512MiB': dataset(shape=(2**27,), dtype='f4'),
      'h5_fill_value_256MiB_gzip': dataset(shape=(2**26,), dtype='f4', compression='gzip'),
      'h5_external_dev_zero': dataset(shape=(2**26,), dtype='f4',
                                      external=[('/dev/zero', 0, h5py.h5f.UNLIMITED)]),
      'h5_external_other_file': dataset(shape=(3, 3, 3, 4), dtype='f4',
                                        external=[(str(raw), 0, 432)]),
      'h5_virtual_dataset': lambda group, name: group.create_virtual_dataset(name, layout),
  }.items():
    cases[name] = 'keras', _write_keras(folder / f'{name}.h5', ('conv1', 'kernel:0', make))
  out = {}
  for name, (fmt, content) in cases.items():
    if isinstance(content, bytes):
      path = folder / f'{name}.{fmt}'
      path.write_bytes(content)
      content = path
    out[name] = (fmt, content)
  return out


INFLATED = ['st_header_length_2^62', 'st_header_length_2^40', 'st_header_length_past_end',
            'st_tensor_2^40_bytes', 'st_shape_overflows_u64', 'st_shape_larger_than_offsets',
            'st_negative_offset', 'caffe_blob_claims_2^64_floats', 'caffe_legacy_dims_2^60',
            'caffe_negative_dim', 'caffe_packed_data_length_2^31', 'caffe_layer_length_2^40',
            'h5_fill_value_8TiB', 'h5_fill_value_512MiB', 'h5_fill_value_256MiB_gzip',
            'h5_external_dev_zero', 'h5_external_other_file', 'h5_virtual_dataset']


def _read_all(cases_file: Path) -> None:
  """Subprocess body: reads every case and prints one JSON line per case."""
  for name, (fmt, path) in json.loads(cases_file.read_text()).items():
    before = _peak_mb()
    try:
      READERS[fmt].read_layers(Path(path))
      kind, clean, message = 'read', False, ''
    except BaseException as e:  # noqa: BLE001  (the parent judges every kind)
      kind, message = type(e).__name__, str(e)
      clean = isinstance(e, (ValueError, FileNotFoundError))
    print(json.dumps({'name': name, 'kind': kind, 'clean_error': clean, 'message': message,
                      'path': path, 'growth_mb': _peak_mb() - before}), flush=True)


@pytest.fixture(scope='module')
def inflated(tmp_path_factory) -> dict[str, dict]:
  folder = tmp_path_factory.mktemp('inflated')
  cases = _inflated_files(folder)
  assert sorted(cases) == sorted(INFLATED)
  cases_file = folder / 'cases.json'
  cases_file.write_text(json.dumps({k: (f, str(p)) for k, (f, p) in cases.items()}))
  proc = subprocess.run([sys.executable, __file__, str(cases_file)], capture_output=True,
                        text=True, timeout=120, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {row['name']: row for row in map(json.loads, proc.stdout.splitlines())}


@pytest.mark.parametrize('name', INFLATED)
def test_inflated_size_field(inflated, name):
  row = inflated[name]
  assert row['clean_error'], row  # a ValueError / FileNotFoundError, not a read or a crash
  assert row['path'] in row['message'], row
  assert row['growth_mb'] < MAX_GROWTH_MB, row


def test_valid_files_read(tmp_path):
  """The mutations below start from files every reader reads."""
  net = tmp_path / 'net.caffemodel'
  net.write_bytes(_caffe_net().SerializeToString())
  st = tmp_path / 'net.safetensors'
  st.write_bytes(_safetensors_bytes())
  h5 = _write_keras(tmp_path / 'net.h5')
  for fmt, path in (('caffe', net), ('safetensors', st), ('keras', h5)):
    layers = _outcome(fmt, path)
    assert layers is not None and len(layers) == 3, (fmt, layers)


# ---- structured mutations under hypothesis -----------------------------------------------------

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=60, deadline=3000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
# Sizes a header may claim: small, around the real ones, and absurd.
SIZES = st.one_of(st.integers(0, 64), st.integers(-(2**63), 2**64 - 1),
                  st.sampled_from([2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63, 2**64 - 1]))


@pytest.fixture(autouse=True)
def _bounded_memory():
  """No test here may raise this process' peak RSS by more than a few times the files."""
  before = _peak_mb()
  yield
  assert _peak_mb() - before < 4 * MAX_GROWTH_MB, f'peak RSS grew {_peak_mb() - before:.0f} MB'


def _flip(data: bytes, flips: list[int]) -> bytes:
  out = bytearray(data)
  for position in flips:
    out[position % len(out)] ^= 1 << (position % 8)
  return bytes(out)


@FUZZ
@given(field=st.sampled_from(['shape', 'data_offsets', 'dtype', 'length']), index=st.integers(0, 5),
       value=SIZES, dtype=st.sampled_from(['F32', 'F64', 'F16', 'BF16', 'I64', 'U8', 'BOOL', 'Q']),
       flips=st.lists(st.integers(0, 10**6), max_size=3))
def test_safetensors_header_mutations(tmp_path, field, index, value, dtype, flips):
  header, body = _split_safetensors(_safetensors_bytes())
  name = sorted(k for k in header if k != '__metadata__')[index % 6]
  length = None
  if field == 'shape':
    shape = header[name]['shape'] or [1]
    shape[index % len(shape)] = value
    header[name]['shape'] = shape
  elif field == 'data_offsets':
    header[name]['data_offsets'][index % 2] = value
  elif field == 'dtype':
    header[name]['dtype'] = dtype
  else:
    length = value % 2**64
  data = _join_safetensors(header, body, length)
  path = tmp_path / 'mutated.safetensors'
  path.write_bytes(_flip(data, flips) if flips else data)
  _outcome('safetensors', path)


@FUZZ
@given(layer=st.integers(0, 2), blob=st.integers(0, 1),
       shape=st.lists(SIZES, max_size=5), legacy=st.booleans(), doubles=st.booleans(),
       drop_values=st.booleans(), flips=st.lists(st.integers(0, 10**6), max_size=3),
       cut=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_caffe_blob_mutations(tmp_path, layer, blob, shape, legacy, doubles, drop_values, flips,
                              cut):
  net = _caffe_net()
  target = net.layer[layer].blobs[blob]
  values = list(target.data)
  if legacy:
    target.ClearField('shape')
    dims = (shape + [1, 1, 1, 1])[:4]
    for key, dim in zip(('num', 'channels', 'height', 'width'), dims):
      setattr(target, key, int(np.clip(dim, -(2**31), 2**31 - 1)))
  else:
    del target.shape.dim[:]
    target.shape.dim.extend(int(np.clip(d, -(2**63), 2**63 - 1)) for d in shape)
  if doubles:
    target.double_data.extend(values)
  if drop_values:
    target.ClearField('data')
  data = net.SerializeToString()
  data = _flip(data, flips) if flips else data
  if cut is not None:
    data = data[:int(len(data) * cut)]
  path = tmp_path / 'mutated.caffemodel'
  path.write_bytes(data)
  _outcome('caffe', path)


@FUZZ
@given(shape=st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2**24)), min_size=0,
                      max_size=4),
       dtype=st.sampled_from(['f2', 'f4', 'f8', 'i4', 'u1', 'S4']),
       compression=st.sampled_from([None, 'gzip', 'lzf']), write=st.booleans(),
       flips=st.lists(st.integers(0, 10**6), max_size=2))
def test_hdf5_dataset_mutations(tmp_path, shape, dtype, compression, write, flips):
  size = int(np.prod(shape, dtype=object)) if shape else 1
  itemsize = np.dtype(dtype).itemsize

  def make(group, name):
    filtered = compression is not None and size > 0 and shape  # scalars take no filters
    d = group.create_dataset(name, shape=tuple(shape), dtype=dtype,
                             compression=compression if filtered else None,
                             chunks=tuple(max(1, min(s, 64)) for s in shape) if filtered else None)
    if write and size * itemsize <= 1 << 16:  # only small arrays get values
      d[()] = np.ones(shape, dtype)

  path = _write_keras(tmp_path / 'mutated.h5', ('conv1', 'kernel:0', make))
  if flips:
    path.write_bytes(_flip(path.read_bytes(), flips))
  layers = _outcome('keras', path)
  if layers is not None and not flips:
    assert layers['conv1']['kernel'].shape == tuple(shape)


# ---- pickled code in .pth files -----------------------------------------------------------------


class _CreatesFile:
  """Unpickling this calls open(path, 'w'): if a reader ran it, the file would appear."""

  def __init__(self, path: Path):
    self.path = str(path)

  def __reduce__(self):
    return open, (self.path, 'w')


class _MakesFolder:
  def __init__(self, path: Path):
    self.path = str(path)

  def __reduce__(self):
    return os.mkdir, (self.path,)


def test_pickled_code_is_refused(tmp_path):
  torch = pytest.importorskip('torch')
  from medft.weights import convert
  from medft.weights import torch as torch_reader
  marker, folder = tmp_path / 'code_ran.txt', tmp_path / 'code_ran_dir'
  files = {}
  files['zip_state_dict.pth'] = lambda p: torch.save(
      {'features.0.weight': torch.zeros(4, 3, 3, 3), 'features.0.bias': _CreatesFile(marker)}, p)
  files['zip_whole_object.pth'] = lambda p: torch.save(_MakesFolder(folder), p)
  files['legacy_pickle.pth'] = lambda p: p.write_bytes(
      pickle.dumps({'features.0.weight': _CreatesFile(marker)}, protocol=2))
  files['nested_state_dict.pt'] = lambda p: torch.save(
      {'state_dict': {'features.0.weight': torch.zeros(2)}, 'hook': _MakesFolder(folder)}, p)
  # The payloads are real: plain unpickling runs them.
  control = tmp_path / 'control'
  pickle.loads(pickle.dumps(_CreatesFile(control)))
  assert control.exists()
  for name, write in files.items():
    path = tmp_path / name
    write(path)
    for read in (lambda: torch_reader.read_layers(path),
                 lambda: convert.read_weights(path, 'torch', 'alexnet_torchvision')):
      with pytest.raises(ValueError, match='weights_only') as info:
        read()
      assert str(path) in str(info.value)
      assert not marker.exists() and not folder.exists(), f'{name}: code from the file ran'


if __name__ == '__main__':
  _read_all(Path(sys.argv[1]))
