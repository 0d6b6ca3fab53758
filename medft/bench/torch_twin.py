"""The PyTorch twin: the same networks (layout, widths, frozen units) as medft's, in torch.

`torch_net` builds AlexNet (Caffe and torchvision forms), SqueezeNet 1.1, ViT-B/16, ResNet-18/50
(and Keras' v1 ResNet50) and DenseNet-121 in NCHW with the units of `medft.models`;
`torch_train_step` and `torch_predict` time it as the JAX cases are timed, on the GPU when JAX
uses one (bf16 autocast when the JAX cases run bf16), else on the CPU with as many threads as
JAX has cores (frozen units in eval mode: BatchNorm with running statistics, as in medft).
torch is imported only when a twin is built.
"""

from __future__ import annotations

import contextlib
import statistics
from typing import Callable

import jax

from medft import tuning
from medft.bench.core import NUM_CLASSES, Settings, torch_threads


def torch_device() -> str:
  """The torch twin runs where JAX runs: on the GPU when JAX uses one, else on the CPU."""
  import torch
  if jax.default_backend() == 'gpu' and torch.cuda.is_available():
    torch.backends.cudnn.benchmark = True  # autotuned kernels, as XLA autotunes its own
    torch.set_float32_matmul_precision('high')  # TF32, like XLA's default f32 precision
    return 'cuda'
  torch.set_num_threads(torch_threads())
  return 'cpu'


def torch_dtype(s: Settings) -> str:
  """The torch twin's compute dtype: bf16 autocast on CUDA when JAX runs bf16, else float32.

  On the CPU the twin stays float32 (PyTorch's CPU bf16 kernels are a different comparison).
  """
  if s.dtype == 'bfloat16' and jax.default_backend() == 'gpu' and torch_device() == 'cuda':
    return 'bfloat16'
  return 'float32'


def _autocast(device: str, dtype: str):
  import torch
  if dtype == 'bfloat16':
    return torch.autocast(device, dtype=torch.bfloat16)
  return contextlib.nullcontext()


def _torch_sync(device: str) -> None:
  if device == 'cuda':
    import torch
    torch.cuda.synchronize()


def torch_net(arch: str, s: Settings):
  """(module, {unit: submodule}) of the PyTorch twin of a medft architecture (NCHW)."""
  import torch
  from torch import nn

  def conv(i, o, k, stride=1, pad=0, groups=1):
    return nn.Conv2d(i, o, k, stride, pad, groups=groups)

  units: dict[str, nn.Module] = {}
  if arch in ('alexnet', 'alexnet_torchvision'):
    caffe = arch == 'alexnet'
    if caffe:
      w = lambda n: max(4, int(n * s.width)) // 2 * 2  # noqa: E731
      lrn = lambda: nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)  # noqa: E731
      pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
      units['conv1'] = conv(3, w(96), 11, 4)
      units['conv2'] = conv(w(96), w(256), 5, 1, 2, groups=2)
      units['conv3'] = conv(w(256), w(384), 3, 1, 1)
      units['conv4'] = conv(w(384), w(384), 3, 1, 1, groups=2)
      units['conv5'] = conv(w(384), w(256), 3, 1, 1, groups=2)
      trunk = nn.Sequential(units['conv1'], nn.ReLU(), lrn(), pool(), units['conv2'], nn.ReLU(),
                            lrn(), pool(), units['conv3'], nn.ReLU(), units['conv4'], nn.ReLU(),
                            units['conv5'], nn.ReLU(), pool())
    else:
      w = lambda n: max(4, int(n * s.width))  # noqa: E731
      pool = lambda: nn.MaxPool2d(3, 2)  # noqa: E731
      units['conv1'] = conv(3, w(64), 11, 4, 2)
      units['conv2'] = conv(w(64), w(192), 5, 1, 2)
      units['conv3'] = conv(w(192), w(384), 3, 1, 1)
      units['conv4'] = conv(w(384), w(256), 3, 1, 1)
      units['conv5'] = conv(w(256), w(256), 3, 1, 1)
      trunk = nn.Sequential(units['conv1'], nn.ReLU(), pool(), units['conv2'], nn.ReLU(), pool(),
                            units['conv3'], nn.ReLU(), units['conv4'], nn.ReLU(), units['conv5'],
                            nn.ReLU(), pool(), nn.AdaptiveAvgPool2d((6, 6)))
    with torch.no_grad():
      flat = trunk(torch.zeros(1, 3, s.input_size, s.input_size)).numel()
    hidden = max(8, int(4096 * s.width))
    units['fc6'], units['fc7'] = nn.Linear(flat, hidden), nn.Linear(hidden, hidden)
    units['fc8'] = nn.Linear(hidden, NUM_CLASSES)
    if caffe:  # dropout after each ReLU
      head = [units['fc6'], nn.ReLU(), nn.Dropout(), units['fc7'], nn.ReLU(), nn.Dropout()]
    else:      # torchvision: dropout before fc6 and fc7
      head = [nn.Dropout(), units['fc6'], nn.ReLU(), nn.Dropout(), units['fc7'], nn.ReLU()]
    net = nn.Sequential(trunk, nn.Flatten(), *head, units['fc8'])
  elif arch == 'squeezenet1_1':
    from medft.models.squeezenet import FIRES
    w = lambda n: max(2, int(n * s.width))  # noqa: E731

    class Fire(nn.Module):
      def __init__(self, i, sq, ex):
        super().__init__()
        self.squeeze, self.e1, self.e3 = conv(i, sq, 1), conv(sq, ex, 1), conv(sq, ex, 3, 1, 1)

      def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.e1(x)), torch.relu(self.e3(x))], 1)

    units['conv1'] = conv(3, w(64), 3, 2)
    layers, channels = [units['conv1'], nn.ReLU(), nn.MaxPool2d(3, 2)], w(64)
    for i, (sq, ex) in enumerate(FIRES, start=2):
      units[f'fire{i}'] = Fire(channels, w(sq), w(ex))
      layers.append(units[f'fire{i}'])
      channels = 2 * w(ex)
      if i in (3, 5):
        layers.append(nn.MaxPool2d(3, 2))
    units['conv10'] = conv(channels, NUM_CLASSES, 1)
    net = nn.Sequential(*layers, nn.Dropout(), units['conv10'], nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
  elif arch == 'vit_b16':
    net = _torch_vit(s, units)
  elif arch in ('resnet18', 'resnet50', 'resnet50_keras'):
    net = _torch_resnet(arch, s, units)
  elif arch == 'densenet121':
    net = _torch_densenet(s, units)
  else:
    raise ValueError(f'no PyTorch reference for arch={arch!r}.')
  return net, units


def _torch_vit(s: Settings, units: dict):
  """ViT-B/16 as timm builds it (pre-LN blocks, fused qkv through nn.MultiheadAttention,
  exact GELU), with medft's units: embed, the four groups of three blocks (the last one ends
  with the final LayerNorm on the class token), head."""
  import torch
  from torch import nn

  from medft.models.vit import DEPTH, GROUP, LN_EPS, PATCH, UNITS, sizes
  hidden, heads, mlp = sizes(s.width)
  tokens = 1 + (s.input_size // PATCH) ** 2

  class Embed(nn.Module):
    def __init__(self):
      super().__init__()
      self.patch = nn.Conv2d(3, hidden, PATCH, PATCH)
      self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
      self.pos = nn.Parameter(torch.randn(1, tokens, hidden) * 0.02)

    def forward(self, x):
      x = self.patch(x).flatten(2).transpose(1, 2)
      return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.norm1 = nn.LayerNorm(hidden, eps=LN_EPS)
      self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
      self.norm2 = nn.LayerNorm(hidden, eps=LN_EPS)
      self.mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(), nn.Linear(mlp, hidden))

    def forward(self, x):
      h = self.norm1(x)
      x = x + self.attn(h, h, h, need_weights=False)[0]
      return x + self.mlp(self.norm2(x))

  class Group(nn.Module):
    def __init__(self, last: bool):
      super().__init__()
      self.blocks = nn.Sequential(*(Block() for _ in range(GROUP)))
      self.norm = nn.LayerNorm(hidden, eps=LN_EPS) if last else None

    def forward(self, x):
      x = self.blocks(x)
      return x if self.norm is None else self.norm(x[:, 0])

  units['embed'] = Embed()
  groups = UNITS[1:-1]
  for i, name in enumerate(groups):
    units[name] = Group(last=(i + 1) * GROUP == DEPTH)
  units['head'] = nn.Linear(hidden, NUM_CLASSES)
  return nn.Sequential(*(units[u] for u in UNITS[:-1]), nn.Dropout(0.0), units['head'])


def _torch_resnet(arch: str, s: Settings, units: dict):
  """torchvision's ResNet (BasicBlock / v1.5 Bottleneck; Keras v1: stride on the first 1x1
  conv, conv biases) in plain torch, with medft's units stem, layer1 ... layer4, fc."""
  import torch
  from torch import nn
  bottleneck, keras = arch != 'resnet18', arch == 'resnet50_keras'
  w = lambda n: max(2, int(n * s.width))  # noqa: E731
  conv = lambda i, o, k, st=1: nn.Conv2d(i, o, k, st, k // 2, bias=keras)  # noqa: E731

  class Block(nn.Module):
    def __init__(self, i, planes, stride):
      super().__init__()
      out = 4 * planes if bottleneck else planes
      if bottleneck:
        s1, s3 = (stride, 1) if keras else (1, stride)
        layers = [conv(i, planes, 1, s1), nn.BatchNorm2d(planes), nn.ReLU(),
                  conv(planes, planes, 3, s3), nn.BatchNorm2d(planes), nn.ReLU(),
                  conv(planes, out, 1), nn.BatchNorm2d(out)]
      else:
        layers = [conv(i, planes, 3, stride), nn.BatchNorm2d(planes), nn.ReLU(),
                  conv(planes, planes, 3), nn.BatchNorm2d(planes)]
      self.body = nn.Sequential(*layers)
      self.down = (nn.Sequential(conv(i, out, 1, stride), nn.BatchNorm2d(out))
                   if stride != 1 or i != out else nn.Identity())

    def forward(self, x):
      return torch.relu(self.body(x) + self.down(x))

  units['stem'] = nn.Sequential(conv(3, w(64), 7, 2), nn.BatchNorm2d(w(64)), nn.ReLU(),
                                nn.MaxPool2d(3, 2, 1))
  channels = w(64)
  blocks = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
  for i, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
    layers = []
    for b in range(count):
      layers.append(Block(channels, w(planes), 2 if i > 1 and b == 0 else 1))
      channels = w(planes) * (4 if bottleneck else 1)
    units[f'layer{i}'] = nn.Sequential(*layers)
  units['fc'] = nn.Linear(channels, NUM_CLASSES)
  return nn.Sequential(*(units[f'layer{i}'] if i else units['stem'] for i in range(5)),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), units['fc'])


def _torch_densenet(s: Settings, units: dict):
  """torchvision's DenseNet-121 in plain torch, with medft's units stem, block1 ... block4
  (dense block + transition; the last with norm5 and ReLU), classifier."""
  import torch
  from torch import nn

  from medft.models.densenet import DenseNet121
  d = DenseNet121(NUM_CLASSES)
  w = lambda n: max(2, int(n * s.width))  # noqa: E731
  growth, bn_size = w(d.growth_rate), d.bn_size

  class Layer(nn.Module):
    def __init__(self, i):
      super().__init__()
      self.f = nn.Sequential(nn.BatchNorm2d(i), nn.ReLU(), nn.Conv2d(i, bn_size * growth, 1,
                                                                     bias=False),
                             nn.BatchNorm2d(bn_size * growth), nn.ReLU(),
                             nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x):
      return torch.cat([x, self.f(x)], 1)

  channels = w(d.init_features)
  units['stem'] = nn.Sequential(nn.Conv2d(3, channels, 7, 2, 3, bias=False),
                                nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
  for i, count in enumerate(d.block_config, start=1):
    layers = []
    for _ in range(count):
      layers.append(Layer(channels))
      channels += growth
    if i < len(d.block_config):
      layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels // 2, 1,
                                                                bias=False), nn.AvgPool2d(2, 2)]
      channels //= 2
    else:
      layers += [nn.BatchNorm2d(channels), nn.ReLU()]
    units[f'block{i}'] = nn.Sequential(*layers)
  units['classifier'] = nn.Linear(channels, NUM_CLASSES)
  return nn.Sequential(*(units[u] for u in ('stem', 'block1', 'block2', 'block3', 'block4')),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), units['classifier'])


def torch_train_step(arch: str, depth: str, s: Settings, batch: int) -> Callable[[], None]:
  """One SGD step of the torch twin; frozen units have requires_grad=False."""
  import torch
  device = torch_device()
  torch.manual_seed(0)
  net, units = torch_net(arch, s)
  trained = tuning.trained_units(tuple(units), depth)
  for name, unit in units.items():
    unit.requires_grad_(name in trained)
  net.to(device).train()
  for name, unit in units.items():  # frozen units' BatchNorm in inference mode, as in medft
    if name not in trained:
      unit.eval()
  opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3,
                        momentum=0.9, weight_decay=5e-4)
  x = torch.randn(batch, 3, s.input_size, s.input_size, device=device)
  y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
  dtype = torch_dtype(s)

  def step():
    opt.zero_grad(set_to_none=True)
    with _autocast(device, dtype):
      loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    _torch_sync(device)
  return step


def torch_predict(arch: str, s: Settings, batch: int) -> Callable[[], None]:
  import torch
  device = torch_device()
  net, _ = torch_net(arch, s)
  net.to(device).eval()
  x = torch.randn(batch, 3, s.input_size, s.input_size, device=device)
  dtype = torch_dtype(s)

  def run():
    with torch.no_grad(), _autocast(device, dtype):
      torch.softmax(net(x), -1)
    _torch_sync(device)
  return run


def compare(row: dict, torch_seconds: list[float] | None, batch: int, s: Settings) -> dict:
  if torch_seconds:
    row['torch_img_per_s'] = batch / statistics.median(torch_seconds)
    row['vs_torch'] = row['img_per_s'] / row['torch_img_per_s']
    row['torch_dtype'] = torch_dtype(s)
  return row
