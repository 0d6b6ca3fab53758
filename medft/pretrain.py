"""Source models to fine-tune from: the offline pretext model, or ImageNet for users with the data.

The paper fine-tunes an ImageNet-trained AlexNet. Real ImageNet weights cannot be fetched
offline, so the demo trains the same architecture on a self-contained natural-image pretext
task instead and saves it in the converted-weights format (`medft.weights.store`), which the
fine-tuning arms then load through `init=` exactly as they would load converted Caffe weights.

Sources (`config.pretrain.source`):
  pretext       crops of the natural photographs shipped with scikit-image (`skimage.data`:
                astronaut, camera, chelsea, coffee, rocket, coins, ...); the label is which
                photo the crop came from times its rotation by 0/90/180/270 degrees, so the
                network must learn colour, texture and upright-object cues. Saved with
                `source_format='medft-pretext'`. A few hundred steps; NOT a substitute for
                ImageNet features, only an honest offline stand-in.
  imagenet2012  TFDS `imagenet2012` (manual download). Reading prepared data needs no
                TensorFlow (TFDS' array_record data source decodes JPEG with PIL), but
                *preparing* it from the ILSVRC tar files runs TFDS' imagenet2012 builder, which
                uses TensorFlow (tf.io.gfile, CMYK/PNG fix-ups); see configs/imagenet_pretrain.py.
  folder        an extracted ImageNet-style tree `manual_dir/train/<class>/*.JPEG` read with PIL
                (no TensorFlow at all).

`pretrain(config, workdir)` trains with the trainer's own pieces (model registry,
`tuning.make_optimizer` at depth scratch, `trainer.make_steps`) in the training loop of
`medft.loop` (each host feeds its slice of the global batch; checkpoints, SIGTERM, metrics
rows), resumes from `workdir/checkpoints/latest`, and writes the artifact to `workdir/weights`
plus `workdir/pretrain.json` (settings, loss curve, held-out accuracy) from process 0.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from medft import files, loop, parallel, trainer, tuning
from medft.errors import (
  ConfigError,
  InputFileError,
  MissingInputError,
  MissingPackageError,
  NotOursError,
)
from medft.weights import store

SOURCE_FORMAT = 'medft-pretext'
# Natural photographs in skimage.data that ship with the wheel (no download). Medical and
# microscopy images (retina, immunohistochemistry) are left out on purpose.
PHOTOS = ('astronaut', 'camera', 'chelsea', 'coffee', 'rocket', 'coins', 'brick', 'grass',
          'gravel', 'clock', 'moon', 'page', 'text', 'hubble_deep_field', 'stereo_motorcycle')
ROTATIONS = 4
ARTIFACT = 'weights'


# ---- sources -----------------------------------------------------------------------------


def load_photos(names: Sequence[str] = PHOTOS) -> dict[str, np.ndarray]:
  """The skimage photos that exist offline, as uint8 RGB arrays (greyscale repeated)."""
  import skimage.data
  photos = {}
  for name in names:
    try:
      image = getattr(skimage.data, name)()
    except (AttributeError, ModuleNotFoundError, OSError, ValueError) as e:
      logging.warning('skimage.data.%s is not available offline (%s); skipped.', name, e)
      continue
    image = np.asarray(image[0] if isinstance(image, tuple) else image)
    if image.dtype != np.uint8:
      continue
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    photos[name] = np.ascontiguousarray(image[..., :3])
  if len(photos) < 4:
    raise MissingInputError(f'only {len(photos)} of the skimage.data photos {list(names)} could be '
                            'read; reinstall scikit-image (its wheel ships them).')
  return photos


def _random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                         area=(0.08, 1.0)) -> np.ndarray:
  """Inception-style crop (random area and aspect ratio) resized to `size` x `size`."""
  h, w = image.shape[:2]
  for _ in range(10):
    a = rng.uniform(*area) * h * w
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch, cw = int(round(np.sqrt(a / ratio))), int(round(np.sqrt(a * ratio)))
    if 0 < ch <= h and 0 < cw <= w:
      break
  else:
    ch = cw = min(h, w)
  y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
  crop = Image.fromarray(image[y:y + ch, x:x + cw])
  return np.asarray(crop.resize((size, size), Image.BILINEAR))


class PretextSource:
  """Which photo, which rotation: `len(photos) * 4` classes of random crops."""

  def __init__(self, size: int, seed: int, crop_area: Sequence[float] = (0.02, 0.5),
               grey_prob: float = 0.3, names: Sequence[str] = PHOTOS):
    self.photos = load_photos(names)
    self.names = tuple(self.photos)
    self.size, self.seed = int(size), int(seed)
    self.crop_area, self.grey_prob = tuple(crop_area), float(grey_prob)
    self.num_classes = len(self.names) * ROTATIONS
    digest = hashlib.sha256()
    for name in self.names:
      digest.update(name.encode() + self.photos[name].tobytes())
    self.sha256 = digest.hexdigest()
    self.description = 'skimage.data:' + ','.join(self.names)

  def example(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    photo = int(rng.integers(len(self.names)))
    rotation = int(rng.integers(ROTATIONS))
    crop = _random_resized_crop(self.photos[self.names[photo]], self.size, rng, self.crop_area)
    if rng.random() < 0.5:  # a mirror image is still upright: the rotation label holds
      crop = crop[:, ::-1]
    if rng.random() < self.grey_prob:  # the medical targets are greyscale
      crop = np.repeat(crop.mean(-1, keepdims=True), 3, -1).astype(np.uint8)
    return np.ascontiguousarray(np.rot90(crop, rotation)), photo * ROTATIONS + rotation

  def batch_from(self, rng: np.random.Generator, n: int) -> dict:
    images, labels = zip(*(self.example(rng) for _ in range(n)))
    return {'image': np.stack(images), 'label': np.asarray(labels, np.int32)}

  def train_batch(self, step: int, batch: int, host_slice: slice = slice(None)) -> dict:
    out = self.batch_from(np.random.default_rng([self.seed, 11, step]), batch)
    return {k: v[host_slice] for k, v in out.items()}

  def held_out(self, n: int) -> dict:
    return self.batch_from(np.random.default_rng([self.seed, 12]), n)


class _ImageClassesSource:
  """Random-resized crops + flips of a labelled image collection (ImageNet-style training)."""

  def __init__(self, size: int, seed: int, num_examples: int, num_classes: int):
    self.size, self.seed = int(size), int(seed)
    self.num_examples, self.num_classes = int(num_examples), int(num_classes)

  def read(self, index: int) -> tuple[np.ndarray, int]:
    raise NotImplementedError

  def batch_from(self, rng: np.random.Generator, n: int, train: bool = True) -> dict:
    images, labels = [], []
    for index in rng.integers(self.num_examples, size=n):
      image, label = self.read(int(index))
      if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
      crop = _random_resized_crop(image[..., :3], self.size, rng, (0.08, 1.0) if train
                                  else (0.5, 0.5))
      images.append(crop[:, ::-1] if train and rng.random() < 0.5 else crop)
      labels.append(label)
    return {'image': np.stack(images), 'label': np.asarray(labels, np.int32)}

  def train_batch(self, step: int, batch: int, host_slice: slice = slice(None)) -> dict:
    out = self.batch_from(np.random.default_rng([self.seed, 11, step]), batch)
    return {k: v[host_slice] for k, v in out.items()}

  def held_out(self, n: int) -> dict:
    # Drawn from the training images (a check of fit, not a validation score).
    return self.batch_from(np.random.default_rng([self.seed, 12]), n, train=False)


class FolderSource(_ImageClassesSource):
  """`root/train/<class>/*.{JPEG,jpg,jpeg,png}` (classes sorted by folder name)."""

  EXTENSIONS = ('.jpeg', '.jpg', '.png')

  def __init__(self, root: str | Path, size: int, seed: int):
    train = Path(root).expanduser() / 'train'
    classes = sorted(p for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
    self.files = [(f, k) for k, c in enumerate(classes) for f in sorted(c.iterdir())
                  if f.suffix.lower() in self.EXTENSIONS]
    if not self.files:
      raise MissingInputError(
          f'pretrain.manual_dir={root}: expected class folders with images in {train} '
          '(ImageNet layout train/<wnid>/*.JPEG, e.g. from extracting ILSVRC2012_img_train.tar '
          'and its per-class tars).')
    super().__init__(size, seed, len(self.files), len(classes))
    self.description = f'image folder {train} ({self.num_classes} classes)'
    self.sha256 = hashlib.sha256('\n'.join(str(f) for f, _ in self.files).encode()).hexdigest()

  def read(self, index: int) -> tuple[np.ndarray, int]:
    path, label = self.files[index]
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB')), label


class TfdsImagenetSource(_ImageClassesSource):
  """TFDS `imagenet2012` train split through its array_record data source (PIL decoding)."""

  def __init__(self, data_dir: str, manual_dir: str, size: int, seed: int):
    import tensorflow_datasets as tfds
    builder = tfds.builder('imagenet2012', data_dir=data_dir or None,
                           file_format='array_record')
    if not builder.is_prepared():
      if not manual_dir:
        raise MissingInputError(
            'imagenet2012 is not prepared in pretrain.data_dir and pretrain.manual_dir is empty: '
            'put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a folder and pass it as '
            '--config.pretrain.manual_dir, or use pretrain.source=folder on extracted images.')
      try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual_dir)))
      except ImportError as e:  # TFDS' imagenet2012 preparation imports TF and more
        raise MissingPackageError(
            f'preparing imagenet2012 stopped on a missing module ({e}). TFDS\' imagenet2012 '
            'builder needs TensorFlow (tf.io.gfile, CMYK/PNG fix-ups) and importlib_resources '
            'to prepare: `pip install tensorflow-cpu importlib_resources` for that one step '
            '(training stays JAX), or run `tfds build imagenet2012 --file_format=array_record '
            '--manual_dir=...` where TensorFlow is installed and set pretrain.data_dir to its '
            'output, or extract the images and use pretrain.source=folder.') from e
    self.data = builder.as_data_source(split='train')
    super().__init__(size, seed, len(self.data), builder.info.features['label'].num_classes)
    self.description = f'tfds imagenet2012 {builder.version} train ({builder.data_dir})'
    self.sha256 = ''

  def read(self, index: int) -> tuple[np.ndarray, int]:
    example = self.data[index]
    return np.asarray(example['image']), int(example['label'])


def make_source(config: ml_collections.ConfigDict):
  """The pretraining data named by `config.pretrain.source`."""
  p, size = config.pretrain, config.input_size
  if p.source == 'pretext':
    return PretextSource(size, p.seed, crop_area=tuple(p.crop_area), grey_prob=p.grey_prob)
  if p.source == 'folder':
    return FolderSource(p.manual_dir, size, p.seed)
  if p.source == 'imagenet2012':
    return TfdsImagenetSource(p.data_dir, p.manual_dir, size, p.seed)
  raise ConfigError(f'pretrain.source={p.source!r}: expected pretext, folder or imagenet2012.')


# ---- training ----------------------------------------------------------------------------


def _settings(config: ml_collections.ConfigDict) -> dict:
  """What the source model depends on (a cached model is reused only if these match)."""
  keys = ('arch', 'input_size', 'dtype')
  out = {k: config[k] for k in keys}
  out['model'] = config.model.to_dict()
  out['pretrain'] = json.loads(config.pretrain.to_json_best_effort(sort_keys=True))
  return out


def artifact_path(workdir: str | Path) -> Path:
  return Path(workdir) / ARTIFACT


def pretrain(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
  """Trains the source model of `config.pretrain` and returns its converted-weights folder.

  A finished workdir is returned as is (after checking it was made with the same settings);
  an interrupted one (killed, or stopped by SIGTERM: checkpoint, `Preempted`, exit 143)
  resumes from its latest checkpoint. One process per workdir (`workdir/medft.lock`).
  """
  from medft import validate  # here, so that `python -m medft.validate` runs it fresh
  validate.check_config(config, 'pretrain')  # every field in range before anything is written
  workdir = trainer.check_workdir_arg(workdir)
  with trainer.held_workdir(workdir) as lock:
    return _pretrain(config, workdir, lock)


def _read_record(record_file: Path) -> dict:
  try:
    record = json.loads(record_file.read_text())
    if not isinstance(record, dict):
      raise ValueError('not the record of a medft source model')
  except (ValueError, UnicodeDecodeError) as e:
    raise InputFileError(f'{record_file} is damaged ({e}); delete it and repeat the command '
                         '(the source model is trained again from its latest checkpoint).'
                         ) from None
  return record


def _pretrain(config: ml_collections.ConfigDict, workdir: Path, lock) -> Path:
  out = artifact_path(workdir)
  record_file = workdir / 'pretrain.json'
  wanted = _settings(config)
  if (out / 'meta.json').is_file() and record_file.is_file():
    held = _read_record(record_file).get('settings')
    # A source model of an older medft matches when it differs only in fields added since.
    if held is None or trainer.with_added_fields(held) != json.loads(json.dumps(wanted)):
      raise ConfigError(f'{workdir} holds a source model pretrained with other settings; '
                        f'delete {workdir} to pretrain again, or use another workdir.')
    logging.info('Source model %s exists; reusing it.', out)
    return out
  if workdir.is_dir() and files.read_marker(workdir) is None and any(
      p.name not in (trainer.LOCK_FILE, files.MARKER, 'checkpoints', 'metrics.jsonl', ARTIFACT,
                     'pretrain.json') for p in workdir.iterdir()):
    raise NotOursError(f'--workdir={workdir} is a folder of other files (no {files.MARKER} '
                       'marker of medft); medft does not pretrain into it. Use a new or empty '
                       '--workdir.')
  parallel.sync_hosts('source model folder checked')  # every process, before any writes
  files.make_dirs(workdir, 'the source model')
  lock.acquire()
  if jax.process_index() == 0:
    files.write_marker(workdir, 'source_model')
  wall_start = time.time()
  p = config.pretrain

  # ---- data ----
  source = make_source(config)
  parallel.check_batch(p.batch)
  trainer.enable_compile_cache(config.compile_cache)  # as a run does: reruns compile nothing

  # ---- model, optimizer ----
  model_config = ml_collections.ConfigDict(config.to_dict())
  model_config.num_classes = source.num_classes
  model, units = trainer.build_model(model_config)
  meta = store.default_meta(config.arch, (config.input_size, config.input_size))
  params = jax.tree.map(np.asarray, trainer.init_variables(
      model, p.seed, (config.input_size, config.input_size))['params'])
  optim = ml_collections.ConfigDict(dict(
      base_lr=p.base_lr, head_lr_mult=1.0, bias_lr_mult=2.0, momentum=p.momentum,
      weight_decay=p.weight_decay, lr_decay_per_epoch=p.lr_decay))
  steps_per_decay = max(1, p.steps // 10)  # lr x lr_decay ten times over the run
  tx = tuning.make_optimizer(params, units, 'scratch', optim, steps_per_decay)
  state = trainer.TrainState.create(params, tx)

  # ---- checkpoints, loop ----
  steps_loop = loop.Loop(
      workdir, name='pretraining', steps=p.steps, batch=p.batch, log_every=p.log_every,
      eval_every=p.eval_every, checkpoint_every=p.checkpoint_every,
      lr=tuning.lr_schedule(p.base_lr, p.lr_decay, steps_per_decay), lock=lock,
      nonfinite_fix='Lower pretrain.base_lr.')
  try:
    state = steps_loop.resume(state)
    p_train_step, p_predict = trainer.make_steps(model, tx, meta)
    batches = loop.input_pipeline(source, steps_loop.step, p.steps, p.batch, p.workers, 4)
    held = source.held_out(p.eval_examples)

    def held_out_accuracy(replicated_params) -> float:
      probs = parallel.predict_in_batches(p_predict, replicated_params, held['image'],
                                          4 * p.batch)
      return float(np.mean(np.argmax(probs, -1) == held['label']))

    pstate = steps_loop.run(p_train_step, state, batches, jax.random.key(p.seed),
                            lambda params: {'held_out_accuracy': held_out_accuracy(params)})
  finally:
    steps_loop.close()

  # ---- artifact (process 0 writes; the others wait for it) ----
  final = parallel.unreplicate(pstate.params)
  accuracy = held_out_accuracy(pstate.params)
  meta.source_format = SOURCE_FORMAT if p.source == 'pretext' else f'medft-{p.source}'
  meta.source_file = source.description
  meta.source_sha256 = source.sha256
  meta.num_source_classes = source.num_classes
  if jax.process_index() == 0:
    try:
      store.save_artifact(out, final, meta)
    except FileExistsError:  # another shard of the same sweep finished first: same model
      logging.info('%s was written by another process; using it.', out)
    curve = [row for _, row in loop.read_metrics(steps_loop.metrics_file)]
    files.write_json_atomic(record_file, {
        'settings': wanted, 'source': source.description, 'num_classes': source.num_classes,
        'chance_accuracy': 1.0 / source.num_classes, 'held_out_accuracy': accuracy,
        'steps': steps_loop.step, 'wall_s': time.time() - wall_start, 'curve': curve,
        'artifact': str(out)})
  parallel.sync_hosts('source model written')
  logging.info('Source model: held-out accuracy %.3f (chance %.3f) -> %s', accuracy,
               1.0 / source.num_classes, out)
  return out


def describe(init: str | Path | None) -> dict[str, Any]:
  """What a report says about the weights in `init` (meta.json plus pretrain.json if any)."""
  if not init:
    return {}
  path = Path(init)
  out: dict[str, Any] = {'init': str(path)}
  meta_file = path / 'meta.json'
  if meta_file.is_file():
    meta = json.loads(meta_file.read_text())
    out.update({k: meta.get(k) for k in ('arch', 'source_format', 'source_file',
                                         'num_source_classes', 'input_size')})
  record = path.parent / 'pretrain.json'
  if record.is_file():
    r = json.loads(record.read_text())
    out['pretrain'] = {k: r.get(k) for k in ('held_out_accuracy', 'chance_accuracy', 'steps',
                                             'wall_s', 'num_classes')}
  return out
