"""The Caffe importer against the NumPy reference: .caffemodel files written here with the
project's own schema (medft/third_party/caffe) in both NetParameter forms, with random weights."""

import logging

import numpy as np
import pytest
import reference_numpy as ref
import weights_helpers as helpers

from medft.third_party.caffe import schema
from medft.weights import caffe, convert, merge_params

ALEXNET_NAMES = {n: n for n in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7',
                                'fc8')}
# (name, V1 type, current type) in deploy.prototxt order; blob-less layers as a real file has.
ALEXNET_LAYERS = [
    ('conv1', 4, 'Convolution'), ('relu1', 18, 'ReLU'), ('norm1', 15, 'LRN'),
    ('pool1', 17, 'Pooling'), ('conv2', 4, 'Convolution'), ('relu2', 18, 'ReLU'),
    ('norm2', 15, 'LRN'), ('pool2', 17, 'Pooling'), ('conv3', 4, 'Convolution'),
    ('relu3', 18, 'ReLU'), ('conv4', 4, 'Convolution'), ('relu4', 18, 'ReLU'),
    ('conv5', 4, 'Convolution'), ('relu5', 18, 'ReLU'), ('pool5', 17, 'Pooling'),
    ('fc6', 14, 'InnerProduct'), ('relu6', 18, 'ReLU'), ('drop6', 6, 'Dropout'),
    ('fc7', 14, 'InnerProduct'), ('relu7', 18, 'ReLU'), ('drop7', 6, 'Dropout'),
    ('fc8', 14, 'InnerProduct'), ('prob', 20, 'Softmax'),
]
WIDTH, SMALL_INPUT = 0.25, 71  # 71x71 makes every ceil-mode pool keep a partial window


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    low, n = n & 0x7F, n >> 7
    out.append(low | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _set_values(blob, array, double: bool, fast: bool):
  """Fills `data` (field 5) or `double_data` (field 8). `fast` merges the packed field's
  wire bytes into the message instead of extending it value by value (61M values)."""
  values = np.ascontiguousarray(array, '<f8' if double else '<f4').ravel()
  if not fast:
    (blob.double_data if double else blob.data).extend(values.tolist())
    return
  tag = (8 if double else 5) << 3 | 2  # length-delimited: a packed repeated field
  raw = values.tobytes()
  blob.MergeFromString(bytes([tag]) + _varint(len(raw)) + raw)


def write_caffemodel(path, params, form='v1', legacy_shape=False, double=False, fast=False,
                     layers=ALEXNET_LAYERS, conv_groups=None):
  """A .caffemodel of `params` ({layer: {'weight', 'bias'}}, Caffe layout)."""
  net = schema.NetParameter(name='AlexNet')
  for name, v1_type, type_name in layers:
    if form == 'v1':
      layer = net.layers.add(name=name, type=v1_type)
    else:
      layer = net.layer.add(name=name, type=type_name)
    if name not in params:
      continue
    if type_name == 'Convolution':
      layer.convolution_param.num_output = params[name]['weight'].shape[0]
      layer.convolution_param.group = (conv_groups or {}).get(name, 1)
    for key in ('weight', 'bias'):
      array = params[name][key]
      blob = layer.blobs.add()
      if legacy_shape:  # (num, channels, height, width); Caffe pads with leading 1s
        shape = (1,) * (4 - array.ndim) + array.shape
        blob.num, blob.channels, blob.height, blob.width = shape
      else:
        blob.shape.dim.extend(array.shape)
      _set_values(blob, array, double, fast)
  path.write_bytes(net.SerializeToString())
  return path


def _small_alexnet(seed=0):
  rng = np.random.default_rng(seed)
  conv, hidden = helpers.channels('alexnet', WIDTH)
  params = ref.random_caffe_alexnet(rng, conv, hidden, num_classes=7, input_size=SMALL_INPUT)
  return params, helpers.random_input(rng, 2, SMALL_INPUT)


GROUPS = {'conv2': 2, 'conv4': 2, 'conv5': 2}


@pytest.mark.parametrize('form,legacy_shape,double', [
    ('v1', True, False),      # V1LayerParameter, num/channels/height/width, float data
    ('current', False, True),  # LayerParameter, BlobShape, double data
])
def test_alexnet_matches_caffe_reference_layer_by_layer(tmp_path, form, legacy_shape, double):
  params, x = _small_alexnet()
  src = write_caffemodel(tmp_path / 'net.caffemodel', params, form, legacy_shape, double,
                         conv_groups=GROUPS)
  converted, meta = convert.read_weights(src, 'caffe', 'alexnet', model_kwargs={'width': WIDTH},
                                         input_size=(SMALL_INPUT, SMALL_INPUT))
  assert meta.num_source_classes == 7
  ref_logits, ref_acts = ref.caffe_alexnet(params, x)
  helpers.compare('alexnet', converted, ref_logits, ref_acts, ALEXNET_NAMES, x, 7, width=WIDTH)


def test_fc6_rows_are_permuted_from_chw_to_hwc(tmp_path):
  params, _ = _small_alexnet()
  src = write_caffemodel(tmp_path / 'net.caffemodel', params)
  converted, _ = convert.read_weights(src, 'caffe', 'alexnet', model_kwargs={'width': WIDTH},
                                      input_size=(SMALL_INPUT, SMALL_INPUT))
  c = params['conv5']['weight'].shape[0]
  w = params['fc6']['weight']  # (out, C*H*W), H = W = 2 at 71x71
  kernel = converted['fc6']['kernel']  # (H*W*C, out)
  # Flax row (h, w, c) = h*W*C + w*C + c must hold Caffe column c*H*W + h*W + w.
  for h, wi, ch in [(0, 0, 1), (1, 0, 0), (1, 1, c - 1), (0, 1, 5)]:
    np.testing.assert_array_equal(kernel[(h * 2 + wi) * c + ch], w[:, ch * 4 + h * 2 + wi])


def test_full_size_bvlc_alexnet(tmp_path, caplog):
  rng = np.random.default_rng(1)
  params = ref.random_caffe_alexnet(rng)  # 61M weights, the BVLC shapes
  src = write_caffemodel(tmp_path / 'bvlc_alexnet.caffemodel', params, 'v1', legacy_shape=True,
                         fast=True, conv_groups=GROUPS)
  with caplog.at_level(logging.INFO, logger='medft.weights'):
    loaded, meta = convert.read_weights(src, 'caffe', 'alexnet')
  assert 'is not BVLC' in caplog.text  # random weights: warned about, converted anyway
  assert (meta.arch, meta.channel_order, meta.scale, meta.input_size) == (
      'alexnet', 'BGR', 255.0, (227, 227))
  assert meta.mean == (104.0, 117.0, 123.0) and meta.std == (1.0, 1.0, 1.0)
  assert meta.num_source_classes == 1000 and meta.source_format == 'caffe'
  assert loaded['conv2']['kernel'].shape == (5, 5, 48, 256)
  assert loaded['fc6']['kernel'].shape == (9216, 4096)
  x = helpers.random_input(rng, 1, 227)
  ref_logits, ref_acts = ref.caffe_alexnet(params, x)
  helpers.compare('alexnet', loaded, ref_logits, ref_acts, ALEXNET_NAMES, x, 1000)


def test_bvlc_sha1_is_recognised(tmp_path, caplog, monkeypatch):
  params, _ = _small_alexnet()
  src = write_caffemodel(tmp_path / 'net.caffemodel', params)
  sha1, _ = convert._digests(src)
  monkeypatch.setattr(caffe, 'BVLC_ALEXNET_SHA1', sha1)
  with caplog.at_level(logging.INFO, logger='medft.weights'):
    convert.read_weights(src, 'caffe', 'alexnet', model_kwargs={'width': WIDTH},
                         input_size=(SMALL_INPUT, SMALL_INPUT))
  assert f'SHA-1 {sha1} is BVLC' in caplog.text
  assert 'is not BVLC' not in caplog.text


def test_squeezenet_caffe_matches_reference(tmp_path):
  rng = np.random.default_rng(2)
  conv1, fires = helpers.channels('squeezenet1_1', WIDTH)
  params = ref.random_squeezenet1_1(rng, conv1, fires, num_classes=5)
  layers = [(name, 4, 'Convolution') for name in params]
  src = write_caffemodel(tmp_path / 'squeezenet.caffemodel', params, 'current', layers=layers)
  converted, meta = convert.read_weights(src, 'caffe', 'squeezenet1_1',
                                         model_kwargs={'width': WIDTH})
  assert (meta.channel_order, meta.scale, meta.num_source_classes) == ('BGR', 255.0, 5)
  x = helpers.random_input(rng, 2, 63)
  ref_logits, ref_acts = ref.squeezenet1_1(params, x, 'caffe')
  helpers.compare('squeezenet1_1', converted, ref_logits, ref_acts,
                  {n: n for n in params}, x, 5, width=WIDTH, ceil_mode=True)


def test_notop_file_merges_with_dont_load(tmp_path):
  params, _ = _small_alexnet()
  del params['fc8']
  src = write_caffemodel(tmp_path / 'net.caffemodel', params)
  converted, meta = convert.read_weights(src, 'caffe', 'alexnet', model_kwargs={'width': WIDTH},
                                         input_size=(SMALL_INPUT, SMALL_INPUT))
  assert 'fc8' not in converted and meta.num_source_classes == 0
  init = {k: {p: np.zeros_like(v) for p, v in d.items()} for k, d in converted.items()}
  init['fc8'] = {'kernel': np.ones((helpers.channels('alexnet', WIDTH)[1], 3), np.float32),
                 'bias': np.ones(3, np.float32)}
  merged = merge_params(converted, init, dont_load=['fc8'])
  np.testing.assert_array_equal(merged['fc8']['bias'], 1.0)
  np.testing.assert_array_equal(merged['conv1']['kernel'], converted['conv1']['kernel'])
  with pytest.raises(ValueError, match='missing.*fc8/bias'):
    merge_params(converted, init)


def test_caffenet_layer_order_is_warned_about(tmp_path, caplog):
  params, _ = _small_alexnet()
  layers = list(ALEXNET_LAYERS)
  layers[2], layers[3] = layers[3], layers[2]  # pool1 before norm1, as in CaffeNet
  src = write_caffemodel(tmp_path / 'caffenet.caffemodel', params, layers=layers)
  with caplog.at_level(logging.WARNING, logger='medft.weights'):
    caffe.read_layers(src)
  assert 'CaffeNet' in caplog.text


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_truncated_file_is_a_clear_error(tmp_path):
  params, _ = _small_alexnet()
  src = write_caffemodel(tmp_path / 'net.caffemodel', params)
  data = src.read_bytes()
  src.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r'net\.caffemodel: cannot be parsed.*truncated'):
    convert.read_weights(src, 'caffe', 'alexnet')


def test_prototxt_and_other_files_are_rejected(tmp_path):
  text = tmp_path / 'deploy.prototxt'
  text.write_text('name: "AlexNet"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n')
  with pytest.raises(ValueError, match=r'deploy\.prototxt: .*looks like text'):
    convert.read_weights(text, 'caffe', 'alexnet')
  empty = tmp_path / 'empty.caffemodel'
  empty.write_bytes(b'')
  with pytest.raises(ValueError, match=r'empty\.caffemodel: the file is empty'):
    convert.read_weights(empty, 'caffe', 'alexnet')
  png = tmp_path / 'image.caffemodel'
  png.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4)
  with pytest.raises(ValueError, match=r'image\.caffemodel: cannot be parsed'):
    convert.read_weights(png, 'caffe', 'alexnet')


def test_blob_claiming_more_data_than_it_holds(tmp_path):
  net = schema.NetParameter()
  blob = net.layers.add(name='conv1', type=4).blobs.add()
  blob.shape.dim.extend([96, 3, 11, 2**40])  # claims ~1e14 values, holds 4
  blob.data.extend([1.0, 2.0, 3.0, 4.0])
  src = tmp_path / 'liar.caffemodel'
  src.write_bytes(net.SerializeToString())
  with pytest.raises(ValueError, match=r"liar\.caffemodel: layer 'conv1' .*blob 0 claims shape "
                                       r'.* but holds 4 values'):
    convert.read_weights(src, 'caffe', 'alexnet')


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'nothing\.caffemodel: no such file'):
    convert.read_weights(tmp_path / 'nothing.caffemodel', 'caffe', 'alexnet')


def test_other_architecture_is_named(tmp_path):
  params, _ = _small_alexnet()
  src = write_caffemodel(tmp_path / 'net.caffemodel', params)
  with pytest.raises(ValueError, match=r'net\.caffemodel: not a caffe file of squeezenet1_1\. '
                                       r'The layout looks like alexnet: pass --arch=alexnet'):
    convert.read_weights(src, 'caffe', 'squeezenet1_1')
  with pytest.raises(ValueError, match=r'converts alexnet, squeezenet1_1, not '
                                       r'--arch=alexnet_torchvision\. The layout looks like '
                                       r'alexnet'):
    convert.read_weights(src, 'caffe', 'alexnet_torchvision')


def test_ungrouped_conv_is_a_shape_mismatch(tmp_path):
  params, _ = _small_alexnet()
  rng = np.random.default_rng(3)
  c1 = params['conv1']['weight'].shape[0]
  params['conv2'] = ref._conv_params(rng, params['conv2']['weight'].shape[0], c1, 5)  # groups=1
  src = write_caffemodel(tmp_path / 'net.caffemodel', params)
  with pytest.raises(ValueError, match=r'(?s)net\.caffemodel: the converted weights do not fit '
                                       r'alexnet.*mis-shaped.*conv2/kernel: converted '
                                       r'\(5, 5, 24, 64\), alexnet expects \(5, 5, 12, 64\)'):
    convert.read_weights(src, 'caffe', 'alexnet', model_kwargs={'width': WIDTH},
                         input_size=(SMALL_INPUT, SMALL_INPUT))
