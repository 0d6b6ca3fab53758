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
