"""Shared by the weight-reader fuzz tests and the bad-input catalogue: a small valid Caffe file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import reference_numpy as ref

from medft.third_party.caffe import schema


def small_squeezenet() -> dict:
  """Random SqueezeNet 1.1 weights in the reference layout at width 1/16, 3 classes (seed 0)."""
  return ref.random_squeezenet1_1(np.random.default_rng(0), 4, ((2, 4),) * 8, 3)


def write_convolution_net(path: Path, params: dict) -> Path:
  """Writes `params` ({layer: {'weight', 'bias'}}) to `path` as a current-form Caffe
  NetParameter of Convolution layers, and returns `path`."""
  net = schema.NetParameter()
  for name, p in params.items():
    layer = net.layer.add(name=name, type='Convolution')
    for key in ('weight', 'bias'):
      blob = layer.blobs.add()
      blob.shape.dim.extend(p[key].shape)
      blob.data.extend(p[key].ravel().tolist())
  path.write_bytes(net.SerializeToString())
  return path
