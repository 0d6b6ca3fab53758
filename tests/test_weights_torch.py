"""The PyTorch (.pth) and safetensors importers against the NumPy reference and, when PyTorch
is installed, against PyTorch itself. Files hold torchvision-layout random weights."""

import sys

import numpy as np
import pytest
import reference_numpy as ref
import weights_helpers as helpers

from medft.weights import convert

safetensors_numpy = pytest.importorskip('safetensors.numpy')

TORCHVISION_ALEXNET_NAMES = {
    'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6', 'conv4': 'features.8',
    'conv5': 'features.10', 'fc6': 'classifier.1', 'fc7': 'classifier.4', 'fc8': 'classifier.6'}
WIDTH = 0.25
ALEXNET_INPUT = 127  # the last feature map is 3x3: AdaptiveAvgPool2d really resamples to 6x6
SQUEEZENET_INPUT = 65  # every ceil-mode pool keeps a partial window


def state_dict(params):
  return {f'{layer}.{key}': value for layer, d in params.items() for key, value in d.items()}


def _small_torchvision_alexnet(seed=0, num_classes=6):
  rng = np.random.default_rng(seed)
  conv, hidden = helpers.channels('alexnet_torchvision', WIDTH)
  params = ref.random_torchvision_alexnet(rng, conv, hidden, num_classes)
  return params, helpers.random_input(rng, 2, ALEXNET_INPUT)


def _torchvision_squeezenet(seed=0, num_classes=5, width=WIDTH):
  rng = np.random.default_rng(seed)
  conv1, fires = helpers.channels('squeezenet1_1', width)
  deepscale = ref.random_squeezenet1_1(rng, conv1, fires, num_classes)
  params = {ref.torchvision_squeezenet_name(k): v for k, v in deepscale.items()}
  return deepscale, params, helpers.random_input(rng, 2, SQUEEZENET_INPUT)


def test_alexnet_safetensors_matches_reference(tmp_path):
  params, x = _small_torchvision_alexnet()
  src = tmp_path / 'alexnet.safetensors'
  safetensors_numpy.save_file(state_dict(params), str(src))
  converted, meta = convert.read_weights(src, 'safetensors', 'alexnet_torchvision',
                                         model_kwargs={'width': WIDTH})
  assert (meta.channel_order, meta.scale, meta.input_size) == ('RGB', 1.0, (224, 224))
  assert meta.mean == (0.485, 0.456, 0.406) and meta.std == (0.229, 0.224, 0.225)
  assert meta.num_source_classes == 6
  ref_logits, ref_acts = ref.torchvision_alexnet(params, x)
  helpers.compare('alexnet_torchvision', converted, ref_logits, ref_acts,
                  TORCHVISION_ALEXNET_NAMES, x, 6, width=WIDTH)


def test_full_size_torchvision_alexnet_safetensors(tmp_path):
  rng = np.random.default_rng(4)
  params = ref.random_torchvision_alexnet(rng)
  src = tmp_path / 'alexnet.safetensors'
  safetensors_numpy.save_file(state_dict(params), str(src))
  converted, meta = convert.read_weights(src, 'safetensors', 'alexnet_torchvision')
  assert meta.num_source_classes == 1000
  assert converted['fc6']['kernel'].shape == (9216, 4096)
  x = helpers.random_input(rng, 1, 224)
  ref_logits, ref_acts = ref.torchvision_alexnet(params, x)
  helpers.compare('alexnet_torchvision', converted, ref_logits, ref_acts,
                  TORCHVISION_ALEXNET_NAMES, x, 1000)


def test_squeezenet_safetensors_matches_reference(tmp_path):
  deepscale, params, x = _torchvision_squeezenet()
  src = tmp_path / 'squeezenet.safetensors'
  safetensors_numpy.save_file(state_dict(params), str(src))
  converted, meta = convert.read_weights(src, 'safetensors', 'squeezenet1_1',
                                         model_kwargs={'width': WIDTH})
  assert meta.num_source_classes == 5
  ref_logits, ref_acts = ref.squeezenet1_1(deepscale, x, 'torch_ceil')
  helpers.compare('squeezenet1_1', converted, ref_logits, ref_acts, {n: n for n in deepscale},
                  x, 5, width=WIDTH, ceil_mode=True)


def test_other_architecture_is_named(tmp_path):
  params, _ = _small_torchvision_alexnet()
  src = tmp_path / 'alexnet.safetensors'
  safetensors_numpy.save_file(state_dict(params), str(src))
  with pytest.raises(ValueError, match=r'alexnet\.safetensors: --format=safetensors converts '
                                       r'[^.]*alexnet_torchvision, squeezenet1_1[^.]*, not '
                                       r'--arch=alexnet\. '
                                       r'The layout looks like alexnet_torchvision: pass '
                                       r'--arch=alexnet_torchvision'):
    convert.read_weights(src, 'safetensors', 'alexnet')
  with pytest.raises(ValueError, match=r'not a safetensors file of squeezenet1_1\. The layout '
                                       r'looks like alexnet_torchvision'):
    convert.read_weights(src, 'safetensors', 'squeezenet1_1')


def test_wrong_width_is_a_shape_mismatch(tmp_path):
  params, _ = _small_torchvision_alexnet()
  src = tmp_path / 'alexnet.safetensors'
  safetensors_numpy.save_file(state_dict(params), str(src))
  with pytest.raises(ValueError, match=r'(?s)alexnet\.safetensors: the converted weights do not '
                                       r'fit alexnet_torchvision.*mis-shaped \(\d+\): '
                                       r'conv1/bias: converted \(16,\), alexnet_torchvision '
                                       r'expects \(64,\)'):
    convert.read_weights(src, 'safetensors', 'alexnet_torchvision')  # full width expected


def test_truncated_and_missing_safetensors(tmp_path):
  params, _ = _small_torchvision_alexnet()
  src = tmp_path / 'alexnet.safetensors'
  safetensors_numpy.save_file(state_dict(params), str(src))
  data = src.read_bytes()
  src.write_bytes(data[:len(data) // 3])
  with pytest.raises(ValueError, match=r'alexnet\.safetensors: cannot be read as a \.safetensors '
                                       r'file.*truncated'):
    convert.read_weights(src, 'safetensors', 'alexnet_torchvision')
  with pytest.raises(FileNotFoundError, match=r'gone\.safetensors: no such file'):
    convert.read_weights(tmp_path / 'gone.safetensors', 'safetensors', 'alexnet_torchvision')


# ---------------------------------------------------------------------------
# .pth files and PyTorch itself (skipped without PyTorch)
# ---------------------------------------------------------------------------


def test_missing_torch_names_the_extra(tmp_path, monkeypatch):
  src = tmp_path / 'alexnet.pth'
  src.write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` fail
  with pytest.raises(ImportError, match=r'--format=torch needs PyTorch.*medft\[torch\]'):
    convert.read_weights(src, 'torch', 'alexnet_torchvision')


def _torch_alexnet(torch, conv, hidden, num_classes):
  """torchvision.models.AlexNet's module tree (torchvision itself is not needed)."""
  nn = torch.nn
  c1, c2, c3, c4, c5 = conv
  features = nn.Sequential(
      nn.Conv2d(3, c1, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
      nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
  classifier = nn.Sequential(
      nn.Dropout(), nn.Linear(c5 * 36, hidden), nn.ReLU(), nn.Dropout(),
      nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
  model = nn.Module()
  model.features, model.avgpool, model.classifier = features, nn.AdaptiveAvgPool2d(6), classifier
  model.forward = lambda x: classifier(torch.flatten(model.avgpool(features(x)), 1))
  return model.eval()


def test_pth_matches_torch_and_reference(tmp_path):
  torch = pytest.importorskip('torch')
  params, x = _small_torchvision_alexnet(seed=5)
  conv, hidden = helpers.channels('alexnet_torchvision', WIDTH)
  model = _torch_alexnet(torch, conv, hidden, 6)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(params).items()})
  src = tmp_path / 'alexnet.pth'
  torch.save({'state_dict': model.state_dict(), 'epoch': 90}, src)  # a nested checkpoint
  converted, meta = convert.read_weights(src, 'torch', 'alexnet_torchvision',
                                         model_kwargs={'width': WIDTH})
  assert meta.source_format == 'torch' and meta.num_source_classes == 6
  with torch.no_grad():
    torch_logits = model(torch.from_numpy(x)).double().numpy()
  ref_logits, ref_acts = ref.torchvision_alexnet(params, x)
  np.testing.assert_allclose(torch_logits, ref_logits, atol=1e-4)
  logits = helpers.compare('alexnet_torchvision', converted, ref_logits, ref_acts,
                           TORCHVISION_ALEXNET_NAMES, x, 6, width=WIDTH)
  assert np.abs(logits - torch_logits).max() <= 1e-4


def test_reference_caffe_semantics_agree_with_torch():
  """Checks tests/reference_numpy.py itself: grouped conv, Caffe LRN, ceil-mode pooling."""
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(6)
  x = rng.standard_normal((2, 8, 16, 16)) * 30  # large enough for LRN to matter
  w = rng.standard_normal((6, 4, 3, 3)) * 0.3
  b = rng.standard_normal(6)
  tx = torch.from_numpy(x)
  expected = torch.nn.functional.conv2d(tx, torch.from_numpy(w), torch.from_numpy(b),
                                        stride=2, padding=1, groups=2).numpy()
  np.testing.assert_allclose(ref.conv2d(x, w, b, 2, 1, 2), expected, rtol=1e-10, atol=1e-10)
  lrn = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(tx).numpy()
  np.testing.assert_allclose(ref.lrn_across_channels(x), lrn, rtol=1e-10)
  assert np.abs(lrn - x).max() > 1e-2 * np.abs(x).max()
  pool = torch.nn.functional.max_pool2d(tx, 3, 2, ceil_mode=True).numpy()
  assert pool.shape[-1] == 8 and torch.nn.functional.max_pool2d(tx, 3, 2).shape[-1] == 7
  np.testing.assert_array_equal(ref.max_pool(x, 3, 2, 'torch_ceil'), pool)
  np.testing.assert_array_equal(ref.max_pool(x, 3, 2, 'caffe'), pool)  # same for pad 0, k>s
  avg = torch.nn.functional.adaptive_avg_pool2d(tx[..., :5, :5], 3).numpy()
  np.testing.assert_allclose(ref.adaptive_avg_pool(x[..., :5, :5], 3, 3), avg, rtol=1e-12)


def test_pth_errors(tmp_path):
  torch = pytest.importorskip('torch')
  params, _ = _small_torchvision_alexnet()
  src = tmp_path / 'alexnet.pth'
  torch.save({k: torch.from_numpy(v) for k, v in state_dict(params).items()}, src)
  with pytest.raises(ValueError, match=r'alexnet\.pth: .*looks like alexnet_torchvision: pass '
                                       r'--arch=alexnet_torchvision'):
    convert.read_weights(src, 'torch', 'alexnet')
  data = src.read_bytes()
  src.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r'alexnet\.pth: cannot be read as a PyTorch state_dict'):
    convert.read_weights(src, 'torch', 'alexnet_torchvision')
  listing = tmp_path / 'list.pth'
  torch.save([torch.zeros(2)], listing)
  with pytest.raises(ValueError, match=r'list\.pth: holds a list, expected a state_dict'):
    convert.read_weights(listing, 'torch', 'alexnet_torchvision')


class _Payload:
  """Unpickling this would create a file: the importer must refuse, not execute it."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def test_pickled_code_is_refused_not_executed(tmp_path):
  torch = pytest.importorskip('torch')
  marker = tmp_path / 'executed'
  src = tmp_path / 'model.pth'
  torch.save({'features.0.weight': _Payload(marker)}, src)
  with pytest.raises(ValueError, match=r'model\.pth: cannot be read .*weights_only=True.*pickled '
                                       r'code'):
    convert.read_weights(src, 'torch', 'alexnet_torchvision')
  assert not marker.exists()
