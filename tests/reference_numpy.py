"""Independent NumPy forward passes with the source frameworks' semantics, for converter tests.

Everything here is NCHW, float64, and written from the frameworks' definitions, not from
medft's models (this module must not import `medft.models`): Caffe's BVLC AlexNet (grouped
convolutions, ACROSS_CHANNELS LRN, ceil-mode pooling), torchvision's AlexNet (floor pooling,
AdaptiveAvgPool2d to 6x6) and SqueezeNet v1.1 (pooling in Caffe, torchvision-ceil or Keras
floor mode). Parameters are `{layer: {'weight': (out, in/groups, kh, kw) | (out, in),
'bias': (out,)}}` under the source's own layer names. Each net returns `(logits, acts)`
where `acts[layer]` is that conv / dense layer's output before its ReLU.

`random_*` build such parameter sets with He-scaled Gaussian weights, so activations stay of
order one through the whole network.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


def conv2d(x, weight, bias, stride=1, pad=0, groups=1):
  """Cross-correlation as in Caffe / PyTorch: weight (out, in // groups, kh, kw)."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  weight = np.asarray(weight, np.float64)
  out_c, in_per_group, kh, kw = weight.shape
  assert x.shape[1] == in_per_group * groups, (x.shape, weight.shape, groups)
  windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
  out_per_group = out_c // groups
  outputs = []
  for g in range(groups):
    xs = windows[:, g * in_per_group:(g + 1) * in_per_group]  # (n, c, oh, ow, kh, kw)
    ws = weight[g * out_per_group:(g + 1) * out_per_group]    # (o, c, kh, kw)
    y = np.tensordot(xs, ws, axes=([1, 4, 5], [1, 2, 3]))     # (n, oh, ow, o)
    outputs.append(y.transpose(0, 3, 1, 2))
  return np.concatenate(outputs, axis=1) + np.asarray(bias, np.float64)[None, :, None, None]


def linear(x, weight, bias):
  """Caffe InnerProduct / torch Linear: weight (out, in)."""
  return x @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)


def relu(x):
  return np.maximum(x, 0.0)


def lrn_across_channels(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
  """Caffe LRN, ACROSS_CHANNELS: x / (k + alpha / size * sum of squares over size channels)^beta.

  The window is centred ((size - 1) / 2 channels on each side) and zero-padded at the ends.
  """
  channels = x.shape[1]
  pre = (size - 1) // 2
  squares = np.pad(x * x, ((0, 0), (pre, size - 1 - pre), (0, 0), (0, 0)))
  window = sum(squares[:, i:i + channels] for i in range(size))
  return x / (k + alpha / size * window) ** beta


def _pool_out(n, window, stride, mode):
  if mode == 'floor':                      # Keras "valid", torch ceil_mode=False
    return (n - window) // stride + 1
  out = math.ceil((n - window) / stride) + 1
  if mode == 'torch_ceil' and (out - 1) * stride >= n:
    out -= 1                             # torch: the last window must start in the input
# Caffe (pad 0) never drops the last window.
  return out


def max_pool(x, window, stride, mode):
  """Max pooling without padding; `mode` is 'caffe', 'torch_ceil' or 'floor'."""
  n, c, h, w = x.shape
  oh, ow = _pool_out(h, window, stride, mode), _pool_out(w, window, stride, mode)
  need_h, need_w = (oh - 1) * stride + window, (ow - 1) * stride + window
  x = np.pad(x, ((0, 0), (0, 0), (0, max(0, need_h - h)), (0, max(0, need_w - w))),
             constant_values=-np.inf)
  windows = sliding_window_view(x, (window, window), axis=(2, 3))[:, :, ::stride, ::stride]
  return windows[:, :, :oh, :ow].max(axis=(4, 5))


def adaptive_avg_pool(x, out_h, out_w):
  """torch.nn.AdaptiveAvgPool2d: bin i spans [floor(i*n/o), ceil((i+1)*n/o))."""
  n, c, h, w = x.shape
  out = np.empty((n, c, out_h, out_w))
  for i in range(out_h):
    r0, r1 = (i * h) // out_h, -(-((i + 1) * h) // out_h)
    for j in range(out_w):
      c0, c1 = (j * w) // out_w, -(-((j + 1) * w) // out_w)
      out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
  return out


# ---------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------


def caffe_alexnet(params, x):
  """BVLC AlexNet (models/bvlc_alexnet/deploy.prototxt), layer names conv1 ... fc8."""
  acts = {}

  def conv(name, y, stride, pad, groups):
    acts[name] = conv2d(y, params[name]['weight'], params[name]['bias'], stride, pad, groups)
    return relu(acts[name])

  y = max_pool(lrn_across_channels(conv('conv1', x, 4, 0, 1)), 3, 2, 'caffe')
  y = max_pool(lrn_across_channels(conv('conv2', y, 1, 2, 2)), 3, 2, 'caffe')
  y = conv('conv3', y, 1, 1, 1)
  y = conv('conv4', y, 1, 1, 2)
  y = max_pool(conv('conv5', y, 1, 1, 2), 3, 2, 'caffe')
  y = y.reshape(y.shape[0], -1)  # Caffe flattens C, H, W
  for name in ('fc6', 'fc7'):
    acts[name] = linear(y, params[name]['weight'], params[name]['bias'])
    y = relu(acts[name])
  acts['fc8'] = linear(y, params['fc8']['weight'], params['fc8']['bias'])
  return acts['fc8'], acts


def torchvision_alexnet(params, x):
  """torchvision.models.AlexNet in eval mode, layer names features.0 ... classifier.6."""
  acts = {}

  def conv(name, y, stride, pad):
    acts[name] = conv2d(y, params[name]['weight'], params[name]['bias'], stride, pad)
    return relu(acts[name])

  y = max_pool(conv('features.0', x, 4, 2), 3, 2, 'floor')
  y = max_pool(conv('features.3', y, 1, 2), 3, 2, 'floor')
  y = conv('features.6', y, 1, 1)
  y = conv('features.8', y, 1, 1)
  y = max_pool(conv('features.10', y, 1, 1), 3, 2, 'floor')
  y = adaptive_avg_pool(y, 6, 6).reshape(y.shape[0], -1)  # torch.flatten: C, H, W
  for name in ('classifier.1', 'classifier.4'):
    acts[name] = linear(y, params[name]['weight'], params[name]['bias'])
    y = relu(acts[name])
  acts['classifier.6'] = linear(y, params['classifier.6']['weight'],
                                params['classifier.6']['bias'])
  return acts['classifier.6'], acts


SQUEEZENET_FIRES = (2, 3, 4, 5, 6, 7, 8, 9)


def squeezenet1_1(params, x, pool_mode):
  """SqueezeNet v1.1 (DeepScale names conv1, fire2/squeeze1x1, ..., conv10).

  `pool_mode`: 'caffe' (DeepScale), 'torch_ceil' (torchvision), 'floor' (Keras port).
  """
  acts = {}

  def conv(name, y, stride=1, pad=0):
    acts[name] = conv2d(y, params[name]['weight'], params[name]['bias'], stride, pad)
    return relu(acts[name])

  y = max_pool(conv('conv1', x, 2), 3, 2, pool_mode)
  for i in SQUEEZENET_FIRES:
    s = conv(f'fire{i}/squeeze1x1', y)
    y = np.concatenate([conv(f'fire{i}/expand1x1', s), conv(f'fire{i}/expand3x3', s, pad=1)],
                       axis=1)
    if i in (3, 5):
      y = max_pool(y, 3, 2, pool_mode)
  y = conv('conv10', y)  # dropout is the identity at test time
  return y.mean(axis=(2, 3)), acts


# ---------------------------------------------------------------------------
# Random parameters in the source layouts
# ---------------------------------------------------------------------------


def _conv_params(rng, out_c, in_per_group, k):
  fan_in = in_per_group * k * k
  return {'weight': (rng.standard_normal((out_c, in_per_group, k, k), dtype=np.float32)
                     * np.float32(math.sqrt(2.0 / fan_in))),
          'bias': rng.standard_normal(out_c, dtype=np.float32) * np.float32(0.1)}


def _dense_params(rng, out_f, in_f):
  return {'weight': (rng.standard_normal((out_f, in_f), dtype=np.float32)
                     * np.float32(math.sqrt(2.0 / in_f))),
          'bias': rng.standard_normal(out_f, dtype=np.float32) * np.float32(0.1)}


def random_caffe_alexnet(rng, channels=(96, 256, 384, 384, 256), hidden=4096,
                         num_classes=1000, input_size=227):
  c1, c2, c3, c4, c5 = channels
  side = (input_size - 11) // 4 + 1
  for _ in range(3):
    side = _pool_out(side, 3, 2, 'caffe')
  return {
      'conv1': _conv_params(rng, c1, 3, 11),
      'conv2': _conv_params(rng, c2, c1 // 2, 5),
      'conv3': _conv_params(rng, c3, c2, 3),
      'conv4': _conv_params(rng, c4, c3 // 2, 3),
      'conv5': _conv_params(rng, c5, c4 // 2, 3),
      'fc6': _dense_params(rng, hidden, c5 * side * side),
      'fc7': _dense_params(rng, hidden, hidden),
      'fc8': _dense_params(rng, num_classes, hidden),
  }


def random_torchvision_alexnet(rng, channels=(64, 192, 384, 256, 256), hidden=4096,
                               num_classes=1000):
  c1, c2, c3, c4, c5 = channels
  return {
      'features.0': _conv_params(rng, c1, 3, 11),
      'features.3': _conv_params(rng, c2, c1, 5),
      'features.6': _conv_params(rng, c3, c2, 3),
      'features.8': _conv_params(rng, c4, c3, 3),
      'features.10': _conv_params(rng, c5, c4, 3),
      'classifier.1': _dense_params(rng, hidden, c5 * 6 * 6),
      'classifier.4': _dense_params(rng, hidden, hidden),
      'classifier.6': _dense_params(rng, num_classes, hidden),
  }


def random_squeezenet1_1(rng, conv1=64, fires=((16, 64), (16, 64), (32, 128), (32, 128),
                                                (48, 192), (48, 192), (64, 256), (64, 256)),
                         num_classes=1000):
  params = {'conv1': _conv_params(rng, conv1, 3, 3)}
  channels = conv1
  for i, (squeeze, expand) in zip(SQUEEZENET_FIRES, fires):
    params[f'fire{i}/squeeze1x1'] = _conv_params(rng, squeeze, channels, 1)
    params[f'fire{i}/expand1x1'] = _conv_params(rng, expand, squeeze, 1)
    params[f'fire{i}/expand3x3'] = _conv_params(rng, expand, squeeze, 3)
    channels = 2 * expand
  params['conv10'] = _conv_params(rng, num_classes, channels, 1)
  return params


# torchvision's squeezenet1_1 names for the DeepScale ones.
_TORCHVISION_FIRE_INDEX = {2: 3, 3: 4, 4: 6, 5: 7, 6: 9, 7: 10, 8: 11, 9: 12}
_TORCHVISION_BRANCH = {'squeeze1x1': 'squeeze', 'expand1x1': 'expand1x1',
                       'expand3x3': 'expand3x3'}


def torchvision_squeezenet_name(name):
  if name == 'conv1':
    return 'features.0'
  if name == 'conv10':
    return 'classifier.1'
  fire, branch = name.split('/')
  return f'features.{_TORCHVISION_FIRE_INDEX[int(fire[4:])]}.{_TORCHVISION_BRANCH[branch]}'


# ---------------------------------------------------------------------------
# BatchNorm networks: torchvision ResNet / DenseNet (eval mode), Keras ResNet50 / DenseNet121
# ---------------------------------------------------------------------------

TORCH_BN_EPS = 1e-5     # torch.nn.BatchNorm2d
KERAS_BN_EPS = 1.001e-5  # keras.applications' BatchNormalization(epsilon=1.001e-5)


def batch_norm(x, p, eps=TORCH_BN_EPS):
  """Inference-mode BatchNorm (NCHW) with torch's names weight/bias/running_mean/running_var."""
  shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
  f = lambda k: np.asarray(p[k], np.float64).reshape(shape)  # noqa: E731
  return (x - f('running_mean')) / np.sqrt(f('running_var') + eps) * f('weight') + f('bias')


def keras_batch_norm(x, p, eps=KERAS_BN_EPS):
  """Keras BatchNormalization in inference mode: gamma/beta/moving_mean/moving_variance."""
  return batch_norm(x, {'weight': p['gamma'], 'bias': p['beta'], 'running_mean':
                        p['moving_mean'], 'running_var': p['moving_variance']}, eps)


def max_pool_padded(x, window, stride, pad, value=-np.inf):
  """torch MaxPool2d(padding=pad) (value -inf) or Keras ZeroPadding2D + MaxPooling2D (0)."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value)
  return max_pool(x, window, stride, 'floor')


def avg_pool2(x):
  """torch AvgPool2d(2, 2) / Keras AveragePooling2D(2, strides=2) (floor mode)."""
  n, c, h, w = x.shape
  x = x[:, :, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def _nobias(weight):
  return np.zeros(weight.shape[0])


def torchvision_resnet(params, x, blocks, bottleneck):
  """torchvision.models.ResNet in eval mode (v1.5 Bottleneck: stride on conv2), names
  conv1, bn1, layer1.0.conv1, ..., layer1.0.downsample.0/1, fc. `acts` holds the output of
  each stage ('stem' after the max pool, 'layer1' ... 'layer4')."""
  acts = {}

  def conv(name, y, stride, pad):
    w = params[name]['weight']
    return conv2d(y, w, _nobias(w), stride, pad)

  bn = lambda name, y: batch_norm(y, params[name])  # noqa: E731
  y = relu(bn('bn1', conv('conv1', x, 2, 3)))
  y = acts['stem'] = max_pool_padded(y, 3, 2, 1)
  for stage, count in enumerate(blocks, start=1):
    for b in range(count):
      p = f'layer{stage}.{b}'
      stride = 2 if stage > 1 and b == 0 else 1
      if bottleneck:
        out = relu(bn(f'{p}.bn1', conv(f'{p}.conv1', y, 1, 0)))
        out = relu(bn(f'{p}.bn2', conv(f'{p}.conv2', out, stride, 1)))
        out = bn(f'{p}.bn3', conv(f'{p}.conv3', out, 1, 0))
      else:
        out = relu(bn(f'{p}.bn1', conv(f'{p}.conv1', y, stride, 1)))
        out = bn(f'{p}.bn2', conv(f'{p}.conv2', out, 1, 1))
      if f'{p}.downsample.0' in params:
        y = bn(f'{p}.downsample.1', conv(f'{p}.downsample.0', y, stride, 0))
      y = relu(out + y)
    acts[f'layer{stage}'] = y
  y = y.mean(axis=(2, 3))
  acts['fc'] = linear(y, params['fc']['weight'], params['fc']['bias'])
  return acts['fc'], acts


def keras_resnet50(params, x):
  """keras.applications.ResNet50 (v1: stride on the first 1x1 conv; convs with biases),
  inference mode, Keras names conv1_conv, conv2_block1_0_conv, ..., predictions; Keras
  layouts (conv kernel (kh, kw, in, out), dense (in, out)). Input NCHW as the rest here."""
  acts = {}

  def conv(name, y, stride, pad):
    k = np.asarray(params[name]['kernel'], np.float64)
    return conv2d(y, k.transpose(3, 2, 0, 1), params[name]['bias'], stride, pad)

  bn = lambda name, y: keras_batch_norm(y, params[name])  # noqa: E731
  y = relu(bn('conv1_bn', conv('conv1_conv', x, 2, 3)))        # ZeroPadding2D(3), valid conv
  y = acts['stem'] = max_pool_padded(y, 3, 2, 1, value=0.0)   # ZeroPadding2D(1), MaxPool
  for stage, count in zip((2, 3, 4, 5), (3, 4, 6, 3)):
    for b in range(1, count + 1):
      p = f'conv{stage}_block{b}'
      stride = 2 if stage > 2 and b == 1 else 1
      if b == 1:
        shortcut = bn(f'{p}_0_bn', conv(f'{p}_0_conv', y, stride, 0))
      else:
        shortcut = y
      out = relu(bn(f'{p}_1_bn', conv(f'{p}_1_conv', y, stride, 0)))
      out = relu(bn(f'{p}_2_bn', conv(f'{p}_2_conv', out, 1, 1)))  # padding='same'
      out = bn(f'{p}_3_bn', conv(f'{p}_3_conv', out, 1, 0))
      y = relu(shortcut + out)
    acts[f'layer{stage - 1}'] = y
  y = y.mean(axis=(2, 3))
  acts['fc'] = y @ params['predictions']['kernel'] + params['predictions']['bias']
  return acts['fc'], acts


def torchvision_densenet(params, x, block_config=(6, 12, 24, 16)):
  """torchvision.models.DenseNet in eval mode, names features.conv0, features.norm0,
  features.denseblock1.denselayer1.norm1/conv1/norm2/conv2, features.transition1.norm/conv,
  features.norm5, classifier. `acts`: 'stem', 'block1' ... 'block4' (after norm5 and ReLU)."""
  acts = {}
  f = lambda name: params[f'features.{name}']  # noqa: E731

  def conv(name, y, pad=0):
    return conv2d(y, f(name)['weight'], _nobias(f(name)['weight']), 1, pad)

  w0 = f('conv0')['weight']
  y = relu(batch_norm(conv2d(x, w0, _nobias(w0), 2, 3), f('norm0')))
  y = acts['stem'] = max_pool_padded(y, 3, 2, 1)
  for i, layers in enumerate(block_config, start=1):
    for j in range(1, layers + 1):
      p = f'denseblock{i}.denselayer{j}'
      out = conv(f'{p}.conv1', relu(batch_norm(y, f(f'{p}.norm1'))))
      out = conv(f'{p}.conv2', relu(batch_norm(out, f(f'{p}.norm2'))), pad=1)
      y = np.concatenate([y, out], axis=1)
    if i < len(block_config):
      y = avg_pool2(conv(f'transition{i}.conv', relu(batch_norm(y, f(f'transition{i}.norm')))))
    else:
      y = relu(batch_norm(y, f('norm5')))
    acts[f'block{i}'] = y
  acts['classifier'] = linear(y.mean(axis=(2, 3)), params['classifier']['weight'],
                              params['classifier']['bias'])
  return acts['classifier'], acts


def keras_densenet121(params, x, block_config=(6, 12, 24, 16)):
  """keras.applications.DenseNet121 in inference mode, Keras names conv1/conv, conv1/bn,
  conv2_block1_0_bn, conv2_block1_1_conv, ..., pool2_bn, pool2_conv, bn, predictions."""
  acts = {}

  def conv(name, y, stride=1, pad=0):
    k = np.asarray(params[name]['kernel'], np.float64).transpose(3, 2, 0, 1)
    return conv2d(y, k, _nobias(k), stride, pad)

  bn = lambda name, y: keras_batch_norm(y, params[name])  # noqa: E731
  y = relu(bn('conv1/bn', conv('conv1/conv', x, 2, 3)))
  y = acts['stem'] = max_pool_padded(y, 3, 2, 1, value=0.0)
  for i, layers in enumerate(block_config, start=1):
    for j in range(1, layers + 1):
      p = f'conv{i + 1}_block{j}'
      out = conv(f'{p}_1_conv', relu(bn(f'{p}_0_bn', y)))
      out = conv(f'{p}_2_conv', relu(bn(f'{p}_1_bn', out)), pad=1)
      y = np.concatenate([y, out], axis=1)
    if i < len(block_config):
      y = avg_pool2(conv(f'pool{i + 1}_conv', relu(bn(f'pool{i + 1}_bn', y))))
    else:
      y = relu(bn('bn', y))
    acts[f'block{i}'] = y
  acts['classifier'] = (y.mean(axis=(2, 3)) @ params['predictions']['kernel']
                        + params['predictions']['bias'])
  return acts['classifier'], acts


def _bn_params(rng, c):
  return {'weight': rng.uniform(0.5, 1.5, c).astype(np.float32),
          'bias': (rng.standard_normal(c) * 0.1).astype(np.float32),
          'running_mean': (rng.standard_normal(c) * 0.1).astype(np.float32),
          'running_var': rng.uniform(0.5, 1.5, c).astype(np.float32)}


def _conv_weight(rng, out_c, in_c, k):
  return {'weight': _conv_params(rng, out_c, in_c, k)['weight']}


def random_torchvision_resnet(rng, blocks=(2, 2, 2, 2), bottleneck=False,
                              planes=(64, 128, 256, 512), stem=64, num_classes=1000):
  """torchvision ResNet state_dict (floating tensors) with random weights and BN statistics."""
  params = {'conv1': _conv_weight(rng, stem, 3, 7), 'bn1': _bn_params(rng, stem)}
  channels, expansion = stem, 4 if bottleneck else 1
  for stage, (count, width) in enumerate(zip(blocks, planes), start=1):
    for b in range(count):
      p, stride = f'layer{stage}.{b}', 2 if stage > 1 and b == 0 else 1
      if bottleneck:
        shapes = [(width, channels, 1), (width, width, 3), (width * 4, width, 1)]
      else:
        shapes = [(width, channels, 3), (width, width, 3)]
      for i, (o, c, k) in enumerate(shapes, start=1):
        params[f'{p}.conv{i}'] = _conv_weight(rng, o, c, k)
        params[f'{p}.bn{i}'] = _bn_params(rng, o)
      if stride != 1 or channels != width * expansion:
        params[f'{p}.downsample.0'] = _conv_weight(rng, width * expansion, channels, 1)
        params[f'{p}.downsample.1'] = _bn_params(rng, width * expansion)
      channels = width * expansion
  params['fc'] = _dense_params(rng, num_classes, channels)
  return params


def random_torchvision_densenet(rng, block_config=(6, 12, 24, 16), growth=32, stem=64,
                                bn_size=4, num_classes=1000):
  """torchvision DenseNet state_dict with random weights and BN statistics."""
  params = {'features.conv0': _conv_weight(rng, stem, 3, 7), 'features.norm0':
            _bn_params(rng, stem)}
  channels = stem
  for i, layers in enumerate(block_config, start=1):
    for j in range(1, layers + 1):
      p = f'features.denseblock{i}.denselayer{j}'
      params[f'{p}.norm1'] = _bn_params(rng, channels)
      params[f'{p}.conv1'] = _conv_weight(rng, bn_size * growth, channels, 1)
      params[f'{p}.norm2'] = _bn_params(rng, bn_size * growth)
      params[f'{p}.conv2'] = _conv_weight(rng, growth, bn_size * growth, 3)
      channels += growth
    if i < len(block_config):
      params[f'features.transition{i}.norm'] = _bn_params(rng, channels)
      params[f'features.transition{i}.conv'] = _conv_weight(rng, channels // 2, channels, 1)
      channels //= 2
  params['features.norm5'] = _bn_params(rng, channels)
  params['classifier'] = _dense_params(rng, num_classes, channels)
  return params


def _keras_conv(rng, out_c, in_c, k, bias):
  w = _conv_params(rng, out_c, in_c, k)
  d = {'kernel': np.ascontiguousarray(w['weight'].transpose(2, 3, 1, 0))}
  if bias:
    d['bias'] = w['bias']
  return d


def _keras_bn(rng, c):
  p = _bn_params(rng, c)
  return {'gamma': p['weight'], 'beta': p['bias'], 'moving_mean': p['running_mean'],
          'moving_variance': p['running_var']}


def random_keras_resnet50(rng, planes=(64, 128, 256, 512), stem=64, num_classes=1000):
  """keras.applications.ResNet50 layers {name: {kernel, bias | gamma, beta, moving_*}}."""
  params = {'conv1_conv': _keras_conv(rng, stem, 3, 7, True), 'conv1_bn': _keras_bn(rng, stem)}
  channels = stem
  for stage, count, width in zip((2, 3, 4, 5), (3, 4, 6, 3), planes):
    for b in range(1, count + 1):
      p = f'conv{stage}_block{b}'
      if b == 1:
        params[f'{p}_0_conv'] = _keras_conv(rng, 4 * width, channels, 1, True)
        params[f'{p}_0_bn'] = _keras_bn(rng, 4 * width)
      for i, (o, c, k) in enumerate([(width, channels, 1), (width, width, 3),
                                     (4 * width, width, 1)], start=1):
        params[f'{p}_{i}_conv'] = _keras_conv(rng, o, c, k, True)
        params[f'{p}_{i}_bn'] = _keras_bn(rng, o)
      channels = 4 * width
  dense = _dense_params(rng, num_classes, channels)
  params['predictions'] = {'kernel': np.ascontiguousarray(dense['weight'].T),
                           'bias': dense['bias']}
  return params


def random_keras_densenet121(rng, block_config=(6, 12, 24, 16), growth=32, stem=64, bn_size=4,
                             num_classes=1000):
  """keras.applications.DenseNet121 layers (no conv biases)."""
  params = {'conv1/conv': _keras_conv(rng, stem, 3, 7, False), 'conv1/bn': _keras_bn(rng, stem)}
  channels = stem
  for i, layers in enumerate(block_config, start=1):
    for j in range(1, layers + 1):
      p = f'conv{i + 1}_block{j}'
      params[f'{p}_0_bn'] = _keras_bn(rng, channels)
      params[f'{p}_1_conv'] = _keras_conv(rng, bn_size * growth, channels, 1, False)
      params[f'{p}_1_bn'] = _keras_bn(rng, bn_size * growth)
      params[f'{p}_2_conv'] = _keras_conv(rng, growth, bn_size * growth, 3, False)
      channels += growth
    if i < len(block_config):
      params[f'pool{i + 1}_bn'] = _keras_bn(rng, channels)
      params[f'pool{i + 1}_conv'] = _keras_conv(rng, channels // 2, channels, 1, False)
      channels //= 2
  params['bn'] = _keras_bn(rng, channels)
  dense = _dense_params(rng, num_classes, channels)
  params['predictions'] = {'kernel': np.ascontiguousarray(dense['weight'].T),
                           'bias': dense['bias']}
  return params


# ---------------------------------------------------------------------------
# ViT-B/16: timm (`vit_base_patch16_224`, PyTorch semantics) and big_vision / vit_jax (Flax)
# ---------------------------------------------------------------------------

VIT_PATCH = 16


def layer_norm(x, scale, bias, eps=1e-6):
  """torch.nn.LayerNorm / flax.linen.LayerNorm over the last axis (biased variance)."""
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * np.asarray(scale, np.float64) + np.asarray(bias,
                                                                                      np.float64)


def gelu(x):
  """torch.nn.GELU(): x * Phi(x), the exact (erf) form."""
  from scipy.special import erf
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def vit_timm(sd, x, heads, depth=12):
  """timm VisionTransformer.forward (eval), state_dict names `patch_embed.proj.weight`, ...;
  x is NCHW. Attention as timm writes it: qkv reshaped to (3, n, heads, tokens, head_dim)."""
  g = lambda name: np.asarray(sd[name], np.float64)  # noqa: E731
  y = conv2d(x, g('patch_embed.proj.weight'), g('patch_embed.proj.bias'), stride=VIT_PATCH)
  n, d = y.shape[:2]
  y = y.reshape(n, d, -1).transpose(0, 2, 1)                      # flatten(2).transpose(1, 2)
  y = np.concatenate([np.broadcast_to(g('cls_token'), (n, 1, d)), y], axis=1) + g('pos_embed')
  t, hd = y.shape[1], d // heads
  for i in range(depth):
    b = f'blocks.{i}.'
    h = layer_norm(y, g(b + 'norm1.weight'), g(b + 'norm1.bias'))
    qkv = linear(h, g(b + 'attn.qkv.weight'), g(b + 'attn.qkv.bias'))
    q, k, v = qkv.reshape(n, t, 3, heads, hd).transpose(2, 0, 3, 1, 4)
    attn = softmax(q @ k.transpose(0, 1, 3, 2) * hd ** -0.5)
    o = (attn @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
    y = y + linear(o, g(b + 'attn.proj.weight'), g(b + 'attn.proj.bias'))
    h = layer_norm(y, g(b + 'norm2.weight'), g(b + 'norm2.bias'))
    h = linear(gelu(linear(h, g(b + 'mlp.fc1.weight'), g(b + 'mlp.fc1.bias'))),
               g(b + 'mlp.fc2.weight'), g(b + 'mlp.fc2.bias'))
    y = y + h
  y = layer_norm(y, g('norm.weight'), g('norm.bias'))
  return linear(y[:, 0], g('head.weight'), g('head.bias'))


def vit_big_vision(p, x, depth=12):
  """vit_jax / big_vision VisionTransformer (classifier='token', eval) with exact GELU;
  flat names `embedding/kernel`, ...; x is NHWC. Attention in Flax's DenseGeneral layout:
  query kernel (hidden, heads, head_dim), out kernel (heads, head_dim, hidden)."""
  g = lambda name: np.asarray(p[name], np.float64)  # noqa: E731
  n, hh, ww, c = x.shape
  gh, gw = hh // VIT_PATCH, ww // VIT_PATCH
  patches = np.asarray(x, np.float64)[:, :gh * VIT_PATCH, :gw * VIT_PATCH].reshape(
      n, gh, VIT_PATCH, gw, VIT_PATCH, c)
  y = np.einsum('nahbwc,hwcd->nabd', patches, g('embedding/kernel')) + g('embedding/bias')
  d = y.shape[-1]
  y = np.concatenate([np.broadcast_to(g('cls'), (n, 1, d)), y.reshape(n, gh * gw, d)], axis=1)
  y = y + g('Transformer/posembed_input/pos_embedding')
  for i in range(depth):
    b = f'Transformer/encoderblock_{i}/'
    a = b + 'MultiHeadDotProductAttention_1/'
    h = layer_norm(y, g(b + 'LayerNorm_0/scale'), g(b + 'LayerNorm_0/bias'))
    q, k, v = (np.einsum('ntd,dhk->nthk', h, g(a + f'{m}/kernel')) + g(a + f'{m}/bias')
               for m in ('query', 'key', 'value'))
    hd = q.shape[-1]
    attn = softmax(np.einsum('nqhk,nthk->nhqt', q, k) / math.sqrt(hd))
    o = np.einsum('nhqt,nthk->nqhk', attn, v)
    y = y + np.einsum('nqhk,hkd->nqd', o, g(a + 'out/kernel')) + g(a + 'out/bias')
    h = layer_norm(y, g(b + 'LayerNorm_2/scale'), g(b + 'LayerNorm_2/bias'))
    m = b + 'MlpBlock_3/'
    h = gelu(h @ g(m + 'Dense_0/kernel') + g(m + 'Dense_0/bias'))
    y = y + h @ g(m + 'Dense_1/kernel') + g(m + 'Dense_1/bias')
  y = layer_norm(y, g('Transformer/encoder_norm/scale'), g('Transformer/encoder_norm/bias'))
  return y[:, 0] @ g('head/kernel') + g('head/bias')


def _vit_norm(rng, d):
  return (1.0 + 0.1 * rng.standard_normal(d, dtype=np.float32),
          0.1 * rng.standard_normal(d, dtype=np.float32))


def random_vit_timm(rng, hidden, mlp, num_classes, tokens, depth=12):
  """A timm ViT state_dict (flat names) with Gaussian weights scaled by 1 / sqrt(fan-in)."""
  def dense(name, out_f, in_f):
    sd[name + '.weight'] = (rng.standard_normal((out_f, in_f), dtype=np.float32)
                            * np.float32(1 / math.sqrt(in_f)))
    sd[name + '.bias'] = 0.1 * rng.standard_normal(out_f, dtype=np.float32)

  def norm(name):
    sd[name + '.weight'], sd[name + '.bias'] = _vit_norm(rng, hidden)

  sd = {}
  conv = _conv_params(rng, hidden, 3, VIT_PATCH)
  sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'] = conv['weight'], conv['bias']
  sd['cls_token'] = rng.standard_normal((1, 1, hidden), dtype=np.float32)
  sd['pos_embed'] = 0.5 * rng.standard_normal((1, tokens, hidden), dtype=np.float32)
  for i in range(depth):
    norm(f'blocks.{i}.norm1')
    dense(f'blocks.{i}.attn.qkv', 3 * hidden, hidden)
    dense(f'blocks.{i}.attn.proj', hidden, hidden)
    norm(f'blocks.{i}.norm2')
    dense(f'blocks.{i}.mlp.fc1', mlp, hidden)
    dense(f'blocks.{i}.mlp.fc2', hidden, mlp)
  norm('norm')
  dense('head', num_classes, hidden)
  return sd


def random_vit_big_vision(rng, hidden, heads, mlp, num_classes, tokens, depth=12):
  """A vit_jax ViT checkpoint (flat `/` names, Flax layouts) with scaled Gaussian weights."""
  r = lambda *shape, fan_in=1: (rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
                                * np.float32(1 / math.sqrt(fan_in)))
  hd = hidden // heads
  p = {'embedding/kernel': r(VIT_PATCH, VIT_PATCH, 3, hidden, fan_in=3 * VIT_PATCH ** 2),
       'embedding/bias': 0.1 * r(hidden), 'cls': r(1, 1, hidden),
       'Transformer/posembed_input/pos_embedding': 0.5 * r(1, tokens, hidden)}
  for i in range(depth):
    b = f'Transformer/encoderblock_{i}/'
    a = b + 'MultiHeadDotProductAttention_1/'
    p[b + 'LayerNorm_0/scale'], p[b + 'LayerNorm_0/bias'] = _vit_norm(rng, hidden)
    for m in ('query', 'key', 'value'):
      p[a + f'{m}/kernel'], p[a + f'{m}/bias'] = r(hidden, heads, hd, fan_in=hidden), 0.1 * r(
          heads, hd)
    p[a + 'out/kernel'], p[a + 'out/bias'] = r(heads, hd, hidden, fan_in=hidden), 0.1 * r(hidden)
    p[b + 'LayerNorm_2/scale'], p[b + 'LayerNorm_2/bias'] = _vit_norm(rng, hidden)
    p[b + 'MlpBlock_3/Dense_0/kernel'] = r(hidden, mlp, fan_in=hidden)
    p[b + 'MlpBlock_3/Dense_0/bias'] = 0.1 * r(mlp)
    p[b + 'MlpBlock_3/Dense_1/kernel'] = r(mlp, hidden, fan_in=mlp)
    p[b + 'MlpBlock_3/Dense_1/bias'] = 0.1 * r(hidden)
  p['Transformer/encoder_norm/scale'], p['Transformer/encoder_norm/bias'] = _vit_norm(rng, hidden)
  p['head/kernel'], p['head/bias'] = r(hidden, num_classes, fan_in=hidden), 0.1 * r(num_classes)
  return p


def bilinear_resize(grid, out_h, out_w):
  """torch.nn.functional.interpolate(mode='bilinear', align_corners=False) of an (h, w, c)
  array: source coordinate (i + 0.5) * h / out_h - 0.5, clamped at 0, between two rows."""
  def taps(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo
  grid = np.asarray(grid, np.float64)
  lo, hi, f = taps(grid.shape[0], out_h)
  rows = grid[lo] * (1 - f)[:, None, None] + grid[hi] * f[:, None, None]
  lo, hi, f = taps(grid.shape[1], out_w)
  return rows[:, lo] * (1 - f)[None, :, None] + rows[:, hi] * f[None, :, None]
