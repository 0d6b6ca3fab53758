"""Frozen-trunk feature cache: shallow fine-tuning arms pay for the frozen layers once.

In arm `fc8` nothing below fc8 changes during training, so the output of the frozen trunk for
a given patch is the same at every step. With `train.feature_cache` set, the training loop
turns each host batch of patches into trunk features (`model(x, stop=<last frozen unit>)`,
the unit's deterministic output before any dropout) and the train step runs only the trained
stages (`model(f, start=<depth>)`). A patch seen before (the augmented sets of the polyp and
PE tasks are finite: candidates x views) is looked up instead of recomputed.
The fixed validation patches go through the trunk once, and each evaluation runs only the
trained stages on their features (`trainer.make_predict(..., start)`).

Exact by construction: an entry's key is a hash of the patch's bytes, and the cache itself
belongs to one fingerprint of everything else the feature depends on (architecture and model
settings, the frozen units' parameter bytes, the input convention, the JAX version and the
device kind). New data gives new keys; new weights, a new fingerprint; a stale feature is
never served. The features are those of the same jitted trunk either way, so a run gives the
same result with the cache cold or warm.

`mode` is '' (off), 'memory' (this run only), or a folder where `<fingerprint>.npz` is kept
between runs (the seeds and fractions of a sweep arm share the frozen weights, hence the
file). Files are written atomically; an unreadable one is reported and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from medft import files, parallel, preprocess, tuning
from medft.models import batchnorm

KEY_BYTES = 16


def fingerprint(frozen_params: Any, description: dict) -> str:
  """Hex digest of the frozen parameters (names, dtypes, shapes, bytes) and `description`."""
  h = hashlib.sha256()
  h.update(json.dumps({**description, 'jax': jax.__version__,
                       'device': jax.devices()[0].device_kind}, sort_keys=True).encode())
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(frozen_params),
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    leaf = np.ascontiguousarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}'.encode())
    h.update(leaf.tobytes())
  return h.hexdigest()[:32]


def patch_keys(patches: np.ndarray) -> list[bytes]:
  """One key per patch: a hash of its shape, dtype and bytes."""
  header = f'{patches.dtype}:{patches.shape[1:]}'.encode()
  out = []
  for p in patches:
    h = hashlib.blake2b(header, digest_size=KEY_BYTES)
    h.update(np.ascontiguousarray(p).tobytes())
    out.append(h.digest())
  return out


class FeatureCache:
  """Maps patches to trunk features, computing only the ones not seen before.

  `trunk(patches)` computes features of a host batch (numpy in, numpy out). `max_bytes`
  bounds the features held; once full, new patches are computed but not stored.
  """

  def __init__(self, trunk: Callable[[np.ndarray], np.ndarray], key: str, mode: str,
               max_bytes: int):
    self._trunk = trunk
    self.max_bytes = int(max_bytes)
    self.path = None if mode == 'memory' else self._file(Path(mode), key)
    self._store: dict[bytes, np.ndarray] = {}
    self._bytes = 0
    self._dirty = False
    self.hits = self.misses = 0
    if self.path is not None and self.path.exists():
      self._load()

  @staticmethod
  def _file(folder: Path, key: str) -> Path:
    suffix = f'.p{jax.process_index()}' if jax.process_count() > 1 else ''
    return folder / f'{key}{suffix}.npz'

  def _load(self) -> None:
    try:
      with np.load(self.path, allow_pickle=False) as z:
        keys, feats = z['keys'], z['features']
      if keys.ndim != 2 or keys.shape[1] != KEY_BYTES or len(keys) != len(feats):
        raise ValueError('keys and features do not match')
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      # Only a cache: the run recomputes the features and save() replaces the file atomically.
      logging.warning('Feature cache %s is unreadable (%s: %s); it is rebuilt from the frozen '
                      'trunk (delete the file to silence this).', self.path, type(e).__name__, e)
      return
    for k, f in zip(keys, feats):
      self._add(k.tobytes(), f)
    self._dirty = False
    logging.info('Feature cache %s: %d features loaded.', self.path, len(self._store))

  def _add(self, key: bytes, feature: np.ndarray) -> None:
    if key in self._store or self._bytes + feature.nbytes > self.max_bytes:
      return
    self._store[key] = feature
    self._bytes += feature.nbytes
    self._dirty = True

  def __len__(self) -> int:
    return len(self._store)

  def features(self, patches: np.ndarray, count: bool = True) -> np.ndarray:
    """Trunk features of `patches` (B, ...), from the cache where the patch was seen.

    `count=False` leaves the hit/miss counts (the training stream's) alone.
    """
    keys = patch_keys(patches)
    first = {}  # unseen key -> its first row (a patch repeated in the batch is computed once)
    for i, k in enumerate(keys):
      if k not in self._store:
        first.setdefault(k, i)
    computed = {}
    if first:
      rows = list(first.values())
      for i, f in zip(rows, self._trunk(patches[rows])):
        computed[keys[i]] = f
        self._add(keys[i], f)
    if count:
      self.misses += len(first)
      self.hits += len(keys) - len(first)
    return np.stack([self._store.get(k, computed.get(k)) for k in keys])

  def save(self) -> None:
    """Writes the folder cache (merged with what another run wrote meanwhile)."""
    if self.path is None or not self._dirty:
      return
    if self.path.exists():
      self._load()
    keys = np.frombuffer(b''.join(self._store), np.uint8).reshape(-1, KEY_BYTES)
    feats = np.stack(list(self._store.values()))
    self.path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(self.path, lambda f: np.savez(f, keys=keys, features=feats))
    self._dirty = False
    logging.info('Feature cache %s: %d features (%.0f MiB) saved.', self.path, len(keys),
                 feats.nbytes / 2**20)

  def stats(self) -> dict:
    total = self.hits + self.misses
    return {'hits': self.hits, 'misses': self.misses, 'entries': len(self._store),
            'mib': round(self._bytes / 2**20, 2), 'hit_rate': self.hits / total if total else 0.0,
            'file': str(self.path) if self.path else None}


def frozen_trunk(units: Sequence[str], depth: str, params: Any) -> tuple[str, dict]:
  """The last frozen unit of fine-tuning arm `depth` and the frozen units' parameters (of a
  BatchNorm network's weights, `batchnorm.weights_tree`: their parameters and statistics,
  both part of the fingerprint; the trunk runs its BatchNorm in inference mode)."""
  frozen = [u for u in units if u not in tuning.trained_units(units, depth)]
  if batchnorm.is_variables(params):
    return frozen[-1], {collection: {u: tree[u] for u in frozen if u in tree}
                        for collection, tree in params.items()}
  return frozen[-1], {u: params[u] for u in frozen}


def make_trunk(model, meta, stop: str, frozen_params: Any
               ) -> Callable[[np.ndarray], np.ndarray]:
  """`patches -> features` of `model` up to unit `stop`, over this host's devices.

  Features come back as float32 (exact for a bf16 model too). Calls are padded to a power
  of two, so a few shapes are compiled however many patches a batch misses.
  """
  input_size = tuple(meta.input_size)

  def trunk(params, patches):
    x = preprocess.prepare(patches, meta, input_size)
    return model.apply(batchnorm.as_variables(params), x, stop=stop).astype(jnp.float32)

  predict_fn = parallel.pmap_predict(trunk)
  params = parallel.replicate(frozen_params)
  return lambda patches: parallel.predict_local(
      predict_fn, params, patches, batch=1 << (len(patches) - 1).bit_length())
