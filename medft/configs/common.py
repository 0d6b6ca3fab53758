"""Shared config pieces: the strict argument parser and the paper's training defaults."""

from __future__ import annotations

from typing import Any

import ml_collections

from medft.data import schema as data_schema
from medft.errors import ConfigError


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `key=value,flag,...` against `defaults`; unknown keys are an error.

  A bare `flag` sets a boolean default to True. Values are converted to the type of their
  default (`fraction=0.25` -> float), so `batch=abc` fails here rather than deep in training.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f'config argument {key!r} is unknown; known: '
                        f'{", ".join(sorted(defaults))}.')
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ConfigError(f'config argument {key!r} needs a value ({key}=...).')
      out[key] = True
      continue
    try:
      if isinstance(default, bool):
        if value.lower() not in ('true', 'false', '1', '0'):
          raise ValueError
        out[key] = value.lower() in ('true', '1')
      elif isinstance(default, int):
        out[key] = int(value)
      elif isinstance(default, float):
        out[key] = float(value)
      else:
        out[key] = value
    except ValueError:
      kind = {bool: 'true or false', int: 'an integer', float: 'a number'}[type(default)]
      raise ConfigError(f'config argument {key}={value!r}: expected {kind} '
                        f'(default {key}={default}).') from None
  return out


def set_field(c: ml_collections.ConfigDict, dotted: str, value: str) -> None:
  """`model.width=0.25` style override, converted to the type of the existing field."""
  *parents, leaf = dotted.split('.')
  try:
    for name in parents:
      c = c[name]
    old = c[leaf]
  except (KeyError, AttributeError):
    raise ConfigError(f'{dotted}={value}: the config has no field {dotted}.') from None
  try:
    c[leaf] = value.lower() in ('1', 'true') if isinstance(old, bool) else type(old)(value)
  except (TypeError, ValueError):
    raise ConfigError(f'{dotted}={value!r}: expected a value of the type of that field '
                      f'({type(old).__name__}, now {old!r}).') from None


# Arguments every application config accepts for the accelerator presets.
PRESET_ARGS = {'tpu': False, 'gpu': False}


def apply_presets(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict) -> None:
  """`:tpu` / `:gpu`: bf16 compute, 32 images per device, rarer evaluation and logging.

  The paper's learning-rate rules are unchanged; only throughput-related fields move.
  """
  if arg.tpu and arg.gpu:
    raise ConfigError('config arguments tpu and gpu exclude each other; pick one.')
  if not (arg.tpu or arg.gpu):
    return
  c.dtype = 'bfloat16'
  c.train.batch_per_device = 32 if not arg.batch else 0
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.workers = 8
  c.train.prefetch = 8


def app_args(arg: str | None, **extra: Any) -> ml_collections.ConfigDict:
  """Parses an application config's argument (`configs/<app>.py:key=value,flag,...`).

  Every application accepts the arm (`depth`), training fraction, network, weights, length,
  batch, seed, `synthetic`, the study's `arms`/`fractions`/`train_units`/`seeds` and the
  accelerator presets; `extra` adds the application's own arguments with their defaults.
  """
  return parse_arg(
      arg, depth='fc8', fraction=1.0, arch='alexnet', init='', steps=0, epochs=0.0, batch=0,
      seed=0, synthetic=False, **extra, arms='', fractions='', train_units='', seeds='',
      **PRESET_ARGS)


def base_config(arg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fields every application shares, with the paper's optimizer rules as defaults."""
  c = ml_collections.ConfigDict()
  # Network: alexnet (BVLC Caffe, the paper's), alexnet_torchvision or squeezenet1_1.
  c.arch = arg.arch
  # Arm: scratch, or the lowest tuned unit (fc8 = only the head ... conv1 = all layers).
  c.depth = arg.depth
  # Converted pretrained weights (folder from `python -m medft.weights.convert`); fine-tuning
  # arms need it, scratch ignores it.
  c.init = arg.init
  # One seed for parameters, sampling and dropout.
  c.seed = arg.seed
  # Compute dtype of convolutions and matmuls (params and optimizer state stay float32).
  c.dtype = 'float32'
  # Network input size when no weights give one (the weights' meta.json wins).
  c.input_size = 227
  # Persistent XLA compilation cache: '' = $MEDFT_CACHE_DIR/jax or ~/.cache/medft/jax,
  # 'off' = disabled. Arms of a sweep and restarted runs then skip recompiling the step.
  c.compile_cache = ''

  c.model = ml_collections.ConfigDict()
  # Width multiplier (< 1 only for tests; the paper's network is 1.0).
  c.model.width = 1.0
  # Dropout rate of fc6/fc7 (AlexNet) or before conv10 (SqueezeNet).
  c.model.dropout = 0.5
  # Kernel init of a scratch arm: gaussian (BVLC stds), xavier or he; '' = the arch default.
  c.model.init_scheme = ''
  # Grouped convolution form: auto (split on CPU, XLA's grouped kernel elsewhere), split, xla.
  c.model.group_impl = 'auto'
  # Load init='s head too (a fine-tuned model, e.g. an export of a run; its classes must be
  # the task's); with train.steps=0 the run only evaluates it. False: a new head (the paper).
  c.model.keep_head = False
  # BatchNorm of the trained units (ResNet, DenseNet): train = batch statistics, running
  # averages updated; frozen = running statistics. Frozen units always use running ones.
  c.model.bn_mode = 'train'

  # Data: every field of medft.data.schema (its defaults and meanings), with the fraction of
  # the arm, and half the units held out for testing, as the paper held out (public sets are
  # big enough: CUBS ~1000 subjects, Kvasir-SEG 1000 frames, CVC-ClinicDB 29 videos, CAD-PE
  # 91 patients); the CIMT demo keeps it and trims its test-time cost instead.
  c.data = data_schema.config(fraction=arg.fraction, test_share=0.5)

  c.optim = ml_collections.ConfigDict()
  # lr of every tuned layer (paper: 0.001).
  c.optim.base_lr = 0.001
  # New head's lr multiple in fine-tuning arms (paper: 0.01 = 10 x 0.001; 1 in scratch).
  c.optim.head_lr_mult = 10.0
  # Biases learn at twice their layer's lr (Caffe convention).
  c.optim.bias_lr_mult = 2.0
  # SGD momentum (paper: 0.9).
  c.optim.momentum = 0.9
  # L2 weight decay on weights, not biases (BVLC: 5e-4).
  c.optim.weight_decay = 5e-4
  # lr multiplied by this once per epoch (paper: 0.95).
  c.optim.lr_decay_per_epoch = 0.95
  # Layer-wise lr decay of fine-tuning arms, in (0, 1]: each trained unit below the head
  # learns at this times the unit above (BEiT/MAE-style ViT fine-tuning, e.g. 0.65); 1.0 =
  # off, the paper's rules. See medft/tuning.py.
  c.optim.layer_decay = 1.0

  c.train = ml_collections.ConfigDict()
  # Global batch over all devices (must divide by the device count).
  c.train.batch = arg.batch or 32
  # If > 0, the global batch is this times the device count (accelerator presets).
  c.train.batch_per_device = 0
  # Training length: steps, or epochs (> 0 wins) of `task.epoch_examples` patches.
  c.train.steps = arg.steps or 2000
  c.train.epochs = float(arg.epochs)
  # Validation AUC every this many steps; early stopping after `patience` evals without gain.
  c.train.eval_every = 200
  c.train.patience = 5
  # Progress line and metrics.jsonl row every this many steps.
  c.train.log_every = 50
  # Latest-state checkpoint every this many steps (and at every evaluation and at the end).
  c.train.checkpoint_every = 500
  # On a non-finite loss or gradient: stop with an error (False) or skip the step (True).
  c.train.skip_nonfinite = False
  # Batches prepared ahead by the input pipeline threads.
  c.train.prefetch = 4
  # Host threads cutting patches.
  c.train.workers = 2
  # Frozen-trunk feature cache (fine-tuning arms): '' = off, 'memory' = this run only, or a
  # folder shared by runs (entries keyed by the exact patch bytes and the frozen weights, so a
  # change of data or weights never reuses a stale feature). See medft/feature_cache.py.
  c.train.feature_cache = ''
  # Largest size of the cache in MiB; examples beyond it are computed every time.
  c.train.feature_cache_mb = 2048
  # Also write the metrics.jsonl rows as TensorBoard scalars to <workdir>/tensorboard/
  # (needs tensorboardX: pip install "medft[tensorboard]").
  c.train.tensorboard = False
  return c


def app_config(arg: ml_collections.ConfigDict, num_classes: int,
               data_name: str) -> ml_collections.ConfigDict:
  """`base_config` with an application's class count and dataset, and an empty `task` block."""
  c = base_config(arg)
  c.num_classes = num_classes
  c.data.name = data_name
  c.task = ml_collections.ConfigDict()
  return c


def pretrain_defaults(source: str = 'pretext', steps: int = 400,
                      batch: int = 32) -> ml_collections.ConfigDict:
  """The `config.pretrain` block read by `medft.pretrain` (app configs and imagenet_pretrain)."""
  p = ml_collections.ConfigDict()
  # pretext (skimage photos, offline), folder (ImageNet-style class folders) or imagenet2012
  # (TFDS); '' = no pretraining (fine-tuning arms then need init=).
  p.source = source
  # TFDS data_dir and the folder with the manual download (imagenet2012 / folder sources).
  p.data_dir = ''
  p.manual_dir = ''
  # Training length and global batch of the source model.
  p.steps = steps
  p.batch = batch
  # SGD: lr, momentum, weight decay; lr x lr_decay ten times over the run (staircase).
  p.base_lr = 0.01
  p.momentum = 0.9
  p.weight_decay = 5e-4
  p.lr_decay = 0.8
  # Pretext crops: share of the photo's area covered by a crop; share turned greyscale.
  p.crop_area = (0.02, 0.5)
  p.grey_prob = 0.3
  # Held-out crops for the accuracy check, and its cadence (steps).
  p.eval_examples = 512
  p.eval_every = 100
  p.log_every = 50
  p.checkpoint_every = 500
  # Seed of the source model (independent of the study's seeds).
  p.seed = 0
  # Host threads cutting crops.
  p.workers = 2
  return p


def add_study(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict,
              fractions: str = '0.25,0.5,1.0', train_units: str = '') -> None:
  """Adds the `sweep`, `report`, `auto` and `pretrain` blocks (`medft.sweep`, `medft.auto_tune`).

  `fractions` and `train_units` are the application's training-size design (the paper's).
  Reads the optional arguments `arms`, `fractions`, `train_units`, `seeds` (values separated
  by `+`, e.g. `arms=scratch+fc8+conv1,fractions=0.5+1.0`), `seed` and `pretext` from `arg`;
  giving `fractions` or `train_units` replaces the whole design.
  """
  c.sweep = ml_collections.ConfigDict()
  # Arms of the study ('' = all: scratch, fc8, fc7, ..., conv1), separated by ',' or '+'.
  c.sweep.arms = arg.get('arms', '')
  own_design = arg.get('fractions', '') or arg.get('train_units', '')
  # Training-set fractions, in (0, 1], of `data.fraction_unit` (the paper's design by default).
  c.sweep.fractions = arg.get('fractions', '') if own_design else fractions
  # Also train on exactly this many training units (e.g. '1': the paper's single-patient CIMT
  # arm); each count k runs as the fraction k / (training units), so its folder is
  # DIR/<arm>/<k/n>/<seed> and its results.json says train_units=k. '' = none.
  c.sweep.train_units = arg.get('train_units', '') if own_design else train_units
  # Seeds (default: the config's seed).
  c.sweep.seeds = arg.get('seeds', '') or str(arg.get('seed', 0))
  # This process' share of the runs, 'i/n' (run k of the plan belongs to shard k % n); ''=all.
  c.sweep.shard = ''
  # Build report.md/json/csv and plots when the runs are done.
  c.sweep.report = True
  # Checkpoints a finished run keeps: all (resume + best), best (the selected parameters
  # only; a finished run never resumes), none. Also drops the source model's training state.
  c.sweep.keep_checkpoints = 'all'
  # Scratch arms train at optim.base_lr x this (paper: 1, the fine-tuning rate for scratch
  # too). A shortened schedule can raise it so that scratch learns in the steps it has; each
  # scratch run's config holds the rate it used, and the report names it.
  c.sweep.scratch_lr_mult = 1.0
  # The `layerwise` arm (only when sweep.arms names it): every unit trains, each unit below
  # the head at this times the rate of the unit above (optim.layer_decay; ViT-B: ~0.65).
  c.sweep.layer_decay = 0.65
  # Train the seeds of one arm and fraction as one vmapped program (`medft.packed`): each seed
  # keeps its own run folder and results, equal to its separate run's to float tolerance.
  # Pays on an accelerator that a small-batch step leaves idle; on a CPU it may not.
  c.sweep.pack_seeds = False
  # Several pretrained sources, 'name=path,name=path' (each a medft weights artifact of arch):
  # every fine-tuning arm runs once per source into DIR/<name>/<arm>/<fraction>/<seed>, scratch
  # once; the report compares the sources at each depth (`medft.sources`). '' = one source
  # (init= or the sweep's own source model), layout DIR/<arm>/<fraction>/<seed>.
  c.sweep.sources = ''

  c.report = ml_collections.ConfigDict()
  # Multiplicity correction within each all-pairs table of the report: holm (family-wise
  # error rate) or bh (Benjamini-Hochberg false discovery rate).
  c.report.correction = 'holm'

  c.auto = ml_collections.ConfigDict()
  # Deepen only while validation AUC rises by more than this over the best shallower depth.
  c.auto.tolerance = 0.002
  # Depths in a row without such a gain before stopping.
  c.auto.patience = 1

  # Source model trained into DIR/source_model when init= is empty (see medft/pretrain.py);
  # source '' = none, and fine-tuning arms then need init=.
  c.pretrain = pretrain_defaults(source='pretext' if arg.get('pretext', False) else '',
                                 steps=300)

