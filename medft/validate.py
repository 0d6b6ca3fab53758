"""Every config value's valid range or set, checked before a run, sweep or pretraining writes.

`RULES` below is the one table of what each field accepts (and so also its documentation):
field -> (valid range or set, how to fix a bad value). `check_config(config, mode)` runs at
the very start of `medft.train`, `medft.sweep`, `medft.auto_tune` and `medft.pretrain`, before
the workdir, the data cache or the compile cache is touched, and raises `errors.ConfigError`
naming the field, the value, the valid range and the fix. Rules that depend on more than one
field (steps or epochs, the shares, the arms of the architecture, the smallest input the
network accepts) follow the table in `_cross_checks`.

The smallest input size of each architecture is derived from the model itself: a shape
computation (`jax.eval_shape`, no FLOPs) of the network at a size, which fails or leaves an
empty feature map when the size is too small.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Callable

import ml_collections
from absl import logging

from medft.errors import ConfigError
from medft.models import ARCHS

MODES = ('train', 'sweep', 'auto', 'pretrain')


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one field accepts, in words (`valid`), as a test, and how to fix a bad value."""
  valid: str
  test: Callable[[Any], bool]
  fix: str = ''


# ---- rule builders -----------------------------------------------------------------------


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
  if hi is None:
    return f'{">" if lo_open else ">="} {lo:g}'
  return f'in {"(" if lo_open else "["}{lo:g}, {hi:g}{")" if hi_open else "]"}'


def _inside(v: float, lo, hi, lo_open, hi_open) -> bool:
  return ((lo is None or (v > lo if lo_open else v >= lo)) and
          (hi is None or (v < hi if hi_open else v <= hi)))


def integer(lo: int = 0, hi: int | None = None, fix: str = '') -> Rule:
  return Rule(f'an integer {_interval(lo, hi, False, False)}',
              lambda v: _is_int(v) and _inside(v, lo, hi, False, False), fix)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, fix: str = '') -> Rule:
  words = 'a finite number' + ('' if lo is None else ' ' + _interval(lo, hi, lo_open, hi_open))
  return Rule(words, lambda v: _is_num(v) and _inside(v, lo, hi, lo_open, hi_open), fix)


def _words(values: tuple) -> str:
  """'"", a, b or c': the choices as a user types them."""
  shown = [str(v) if v != '' else '""' for v in values]
  return ', '.join(shown[:-1]) + f' or {shown[-1]}' if len(shown) > 1 else shown[0]


def one_of(*values: Any, fix: str = '') -> Rule:
  return Rule('one of ' + _words(values),
              lambda v: isinstance(v, type(values[0])) and v in values, fix)


def boolean(fix: str = '') -> Rule:
  return Rule('True or False', lambda v: isinstance(v, bool), fix)


def text(fix: str = '') -> Rule:
  return Rule('a string', lambda v: isinstance(v, str), fix)


def path(fix: str = '') -> Rule:
  """A folder or file name: '' (the default) or a path without surrounding blanks."""
  return Rule('a path (or "" for the default)', lambda v: isinstance(v, (str, os.PathLike)) and
              str(v) == str(v).strip(), fix)


def numbers(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            hi_open: bool = False, length: int | None = None, increasing: bool = False,
            integers: bool = False, fix: str = '') -> Rule:
  """A non-empty tuple of numbers each in the range (`length` of them; `increasing` strictly)."""
  each = ('integers' if integers else 'numbers') + (
      '' if lo is None else ' ' + _interval(lo, hi, lo_open, hi_open))
  count = f'{length} ' if length else 'a non-empty tuple of '
  order = ', strictly increasing' if increasing else ', without duplicates'

  def test(v):
    if not isinstance(v, (tuple, list)) or not v or (length and len(v) != length):
      return False
    if not all((_is_int(x) if integers else _is_num(x)) and
               _inside(x, lo, hi, lo_open, hi_open) for x in v):
      return False
    if increasing:
      return all(a < b for a, b in zip(v, v[1:]))
    return len(set(v)) == len(v)
  return Rule(f'{count}{each}{order}', test, fix)


def regex(fix: str = '') -> Rule:
  """A valid Python regular expression ('' or None = none)."""
  def test(v):
    if v in ('', None):
      return True
    if not isinstance(v, str):
      return False
    try:
      re.compile(v)
    except re.error:
      return False
    return True
  return Rule('a valid Python regular expression (or "" for none)', test, fix)


def class_map(fix: str = '') -> Rule:
  return Rule('a non-empty map of class folder name -> integer label 0..n-1, each label used',
              lambda v: v is None or (isinstance(v, Mapping) and bool(v) and all(
                  isinstance(k, str) and k and _is_int(x) for k, x in v.items()) and
                  sorted(set(v.values())) == list(range(len(set(v.values()))))), fix)


def _list_of(kind: Callable[[str], Any], ok: Callable[[Any], bool], words: str,
             fix: str) -> Rule:
  """A comma- or '+'-separated list (the config-argument form) or a sequence: non-empty, no
  duplicates, each item parsing with `kind` and passing `ok`. '' = the default list."""
  def test(v):
    if v in ('', None, ()):
      return True
    items = _items(v)
    try:
      parsed = [kind(x) for x in items]
    except (TypeError, ValueError):
      return False
    return bool(parsed) and len(set(parsed)) == len(parsed) and all(map(ok, parsed))
  return Rule(words, test, fix)


def _items(value: Any) -> list[str]:
  from medft.sweep import list_items  # noqa: PLC0415  (one parser of list values)
  return list_items(value)


def _sources():
  from medft import sources  # noqa: PLC0415  (the one parser of sweep.sources)
  return sources


def _shard(v: Any) -> bool:
  if v == '':
    return True
  match = re.fullmatch(r'(\d+)/(\d+)', str(v))
  return bool(match) and int(match.group(1)) < int(match.group(2))


def _fraction_unit(v: Any) -> bool:
  from medft.data.splits import FRACTION_UNITS  # noqa: PLC0415  (the one list)
  return v == '' or v in FRACTION_UNITS


def _generators(v: Any) -> bool:
  from medft.tasks.polyp import GENERATORS  # noqa: PLC0415  (the registry itself)
  return isinstance(v, str) and all(name in GENERATORS for name in v.split('+'))


# ---- the table ---------------------------------------------------------------------------

_EVERY = 'a positive number of steps, e.g. {key}=100'
DTYPES = ('float32', 'bfloat16', 'float16')

RULES: dict[str, Rule] = {
    # Network and arm (depth is checked against the architecture's arms below).
    'arch': one_of(*ARCHS, fix=f'choose one of {", ".join(ARCHS)} (alexnet: the paper\'s)'),
    'depth': text('choose scratch or a unit of the architecture'),
    'init': path('pass the --out folder of python -m medft.weights.convert, or "" for none'),
    'num_classes': integer(2, fix='the application sets it; use its config file'),
    'seed': integer(0, fix='seeds are integers >= 0, e.g. seed=0'),
    'dtype': one_of(*DTYPES, fix='use float32 (CPU) or bfloat16 (accelerators)'),
    'input_size': integer(1, 4096, fix='see the smallest size of the architecture below'),
    'compile_cache': path('give a writable folder, "" for the default or "off"'),
    'model.width': number(0, 8, lo_open=True, fix='1.0 is the paper\'s network'),
    'model.dropout': number(0, 1, hi_open=True, fix='the paper uses model.dropout=0.5'),
    'model.init_scheme': one_of('', 'gaussian', 'xavier', 'he',
                                fix='"" keeps the architecture\'s default'),
    'model.group_impl': one_of('auto', 'split', 'xla', fix='auto picks per backend'),
    'model.bn_mode': one_of('train', 'frozen', fix='train: batch statistics in the trained '
                            'units (torchvision fine-tuning); frozen: running statistics'),
    'model.keep_head': boolean('True loads init=\'s head too (a model fine-tuned on this '
                               'task); needs init= and a depth other than scratch'),
    # Data (the fields of medft.data.schema.FIELDS).
    'data.name': text('the application config sets it'),
    'data.manual_dir': path('the folder holding your download of the dataset'),
    'data.data_dir': path('a writable folder, or "" for $MEDFT_DATA_DIR or ~/.cache/medft'),
    'data.fraction': number(0, 1, lo_open=True, fix='pass e.g. fraction=0.5'),
    'data.split_seed': integer(0, fix='e.g. data.split_seed=0'),
    'data.val_share': number(0, 1, lo_open=True, hi_open=True, fix='the paper holds out 0.2'),
    'data.test_share': number(0, 1, hi_open=True, fix='e.g. data.test_share=0.5 (the paper '
                              'held out about half)'),
    'data.fraction_unit': Rule('"" or a unit name (subjects, patients, videos, sequences, '
                               'volumes, frames, images)', _fraction_unit,
                               'the unit a training fraction counts, e.g. subjects'),
    'data.synthetic_n': integer(0, fix='0 = the generator\'s default size'),
    'data.synthetic_seed': integer(0, fix='e.g. data.synthetic_seed=0'),
    'data.annotator': one_of('A1', "A1'", 'A2', 'A3', fix='CUBS ships these annotators'),
    'data.classes': class_map('e.g. {"informative": 1, "non_informative": 0}'),
    'data.unit_regex': regex('its first group picks the video or patient id from a file stem'),
    'data.manifest': path('the .csv or .jsonl manifest of your images (data.name=manifest_<kind>)'
                          ', or "" for none'),
    'data.split_by': one_of('subject', 'image', fix='image only when the manifest has no subject '
                            'column and every image is its own subject'),
    'data.synthetic_classes': integer(2, 16, fix='the frames twin\'s classes; 2 = informative '
                                      'and non-informative'),
    # Optimizer (the paper's rules are the defaults).
    'optim.base_lr': number(0, lo_open=True, fix='the paper uses 0.001'),
    'optim.head_lr_mult': number(0, lo_open=True, fix='the paper uses 10'),
    'optim.bias_lr_mult': number(0, fix='Caffe uses 2'),
    'optim.momentum': number(0, 1, hi_open=True, fix='the paper uses 0.9'),
    'optim.weight_decay': number(0, fix='BVLC uses 5e-4'),
    'optim.lr_decay_per_epoch': number(0, 1, lo_open=True, fix='the paper uses 0.95'),
    'optim.layer_decay': number(0, 1, lo_open=True,
                                fix='1.0 = off (the paper); 0.65 is usual for ViT-B'),
    # Training loop.
    'train.batch': integer(1, fix='e.g. batch=32'),
    'train.batch_per_device': integer(0, fix='0 = use train.batch'),
    'train.steps': integer(0, fix='give steps > 0, or epochs > 0'),
    'train.epochs': number(0, fix='0 = use train.steps'),
    'train.eval_every': integer(1, fix=_EVERY.format(key='train.eval_every')),
    'train.patience': integer(1, fix='evaluations without gain before early stopping, e.g. 5'),
    'train.log_every': integer(1, fix=_EVERY.format(key='train.log_every')),
    'train.checkpoint_every': integer(1, fix=_EVERY.format(key='train.checkpoint_every')),
    'train.skip_nonfinite': boolean(),
    'train.prefetch': integer(1, fix='e.g. train.prefetch=4'),
    'train.workers': integer(1, fix='host threads, e.g. train.workers=2'),
    'train.feature_cache': Rule('"" (off), "memory" or a folder name without surrounding blanks',
                                lambda v: isinstance(v, str) and v == v.strip(),
                                'give "memory", a writable folder, or "" to turn the cache off'),
    'train.feature_cache_mb': number(0, lo_open=True, fix='MiB of features, e.g. 2048'),
    'train.tensorboard': boolean('True writes TensorBoard scalars to <workdir>/tensorboard/'),
    # Tasks (the fields each application's config sets).
    'task.patch_size': integer(4, 4096, fix='patches are resized to the network input'),
    'task.boundary_margin': integer(0, fix='pixels, e.g. 2'),
    'task.roi_margin': integer(0, fix='rows, e.g. 12'),
    'task.eval_col_stride': integer(1, fix='1 = every column, as the paper'),
    'task.eval_patches_per_class': integer(1, fix='e.g. 30'),
    'task.patches_per_image': integer(1, fix='e.g. 300'),
    'task.fixed_pool': boolean(),
    'task.class_balanced': boolean('True draws a class first, then a training frame of it '
                                   '(every class equally likely); False draws frames'),
    'task.smooth_window': integer(1, fix='columns, e.g. 9'),
    'task.crop_size': integer(4, 4096, fix='pixels; the frames must be at least this large'),
    'task.crops_per_frame': integer(1, fix='the paper uses 200'),
    'task.test_crops': integer(1, fix='the paper uses 200'),
    'task.val_crops_per_frame': integer(1, fix='e.g. 4'),
    'task.fprs': numbers(0, 1, lo_open=True, hi_open=True, fix='e.g. (0.1, 0.15, 0.2)'),
    'task.smooth_mm': number(0, fix='mm, e.g. 0.5'),
    'task.vessel_hu': number(fix='HU, e.g. 150'),
    'task.defect_hu': numbers(length=2, increasing=True, fix='(low, high) HU, e.g. (-200, 120)'),
    'task.adjacent_mm': number(0, fix='mm, e.g. 3'),
    'task.open_mm': number(0, fix='mm; 0 = off'),
    'task.closing_mm': number(0, fix='mm, e.g. 2'),
    'task.lungs_only': boolean(),
    'task.lung_hu': number(fix='HU, e.g. -400'),
    'task.hilum_mm': number(0, fix='mm, e.g. 10'),
    'task.min_volume_mm3': number(0, fix='mm^3, e.g. 2'),
    'task.max_candidates': integer(1, fix='e.g. 100'),
    'task.axis_derivative_mm': number(0, lo_open=True, fix='mm, e.g. 1'),
    'task.axis_window_mm': number(0, lo_open=True, fix='mm, e.g. 3'),
    'task.widths_mm': numbers(0, lo_open=True, fix='mm; the paper uses (10, 15, 20)'),
    'task.shifts_mm': numbers(fix='mm along the vessel, e.g. (-2, 0, 2)'),
    'task.rotations': integer(1, fix='the paper uses 6'),
    'task.hu_window': numbers(length=2, increasing=True, fix='(low, high) HU, e.g. (-250, 450)'),
    'task.val_max_patches': integer(1, fix='e.g. 4000'),
    'task.eval_chunk': integer(1, fix='e.g. 4096'),
    'task.views_on': one_of('device', 'host'),
    'task.fp_rates': numbers(0, lo_open=True, fix='false positives per unit, e.g. (1, 2, 3)'),
    'task.froc_max_fp': number(0, lo_open=True, fix='must cover task.fp_rates'),
    'task.frame_max_side': integer(16, fix='pixels, e.g. 512'),
    'task.generator': Rule('registered candidate generators joined by +', _generators,
                           'dog (blobs), grid (tiled boxes) or dog+grid (both)'),
    'task.min_brightness': number(0, 1, fix='0 keeps every centre; the default 0.1 drops the '
                                  'black frame border'),
    'task.dedup_frac': number(0, fix='0 keeps every candidate; e.g. 0.25'),
    'task.roi_height_mm': number(0, lo_open=True, fix='the test ROI box height, e.g. 6.0'),
    'task.roi_file': path('"" = the box from task.roi_height_mm; else a CSV of ROI rows per '
                          'image'),
    'task.work_size': integer(16, fix='pixels, e.g. 128'),
    'task.blob_sigmas': numbers(0, 1, lo_open=True, fix='fractions of the shorter side'),
    'task.min_distance': number(0, 1, fix='a fraction of the shorter side, e.g. 0.04'),
    'task.grid_box_fracs': numbers(0, 1, lo_open=True, fix='fractions of the shorter side'),
    'task.min_box': number(1, fix='pixels, e.g. 8'),
    'task.train_on_boxes': boolean(),
    'task.scales': numbers(0, lo_open=True, fix='the paper uses (1.0, 1.2, 1.5)'),
    'task.shift_frac': number(0, 1, fix='the paper uses 0.1'),
    'task.shift_steps': numbers(integers=True, fix='e.g. (-1, 0, 1)'),
    'task.orientations': integer(1, 8, fix='the paper uses 8'),
    # The study: sweep, auto, pretrain (arms are checked against the architecture below).
    'sweep.arms': text('"" = every arm; else arms separated by , or + (e.g. scratch+fc8)'),
    'sweep.fractions': _list_of(
        float, lambda f: 0 < f <= 1, 'numbers in (0, 1] separated by , or +, no duplicates',
        'e.g. sweep.fractions=0.25,0.5,1.0'),
    'sweep.seeds': _list_of(
        int, lambda s: s >= 0, 'integers >= 0 separated by , or +, no duplicates',
        'e.g. sweep.seeds=0,1,2'),
    'sweep.shard': Rule('"" (every run) or i/n with 0 <= i < n', _shard, 'e.g. 0/4'),
    'sweep.train_units': _list_of(
        int, lambda k: k >= 1, 'whole numbers >= 1 separated by , or +, no duplicates',
        'e.g. sweep.train_units=1 (one training subject); "" = none'),
    'sweep.report': boolean(),
    'report.correction': one_of('holm', 'bh', fix='holm (family-wise) or bh (false discovery '
                                'rate)'),
    'sweep.keep_checkpoints': one_of('all', 'best', 'none', fix='all keeps resume + best'),
    'sweep.scratch_lr_mult': number(0, lo_open=True, fix='the paper uses 1'),
    'sweep.layer_decay': number(0, 1, lo_open=True, fix='optim.layer_decay of the layerwise '
                                'arm; 0.65 is usual for ViT-B'),
    'sweep.pack_seeds': boolean('True trains the seeds of one arm and fraction as one '
                                'program; False one after another'),
    'sweep.sources': Rule('"" (one source: init= or the sweep\'s source model) or name=path '
                          'entries separated by , or + (name: a letter, then letters, digits, '
                          '_ or -; each once; path: a medft weights artifact)',
                          lambda v: isinstance(v, (str, list, tuple)),  # entries: below
                          'e.g. sweep.sources=imagenet=weights/tv_alexnet,own=runs/export1'),
    'auto.tolerance': number(0, fix='validation AUC gain, e.g. 0.002'),
    'auto.patience': integer(1, fix='depths in a row without gain, e.g. 1'),
    'pretrain.source': one_of('', 'pretext', 'folder', 'imagenet2012',
                              fix='"" = no pretraining (then init= is needed)'),
    'pretrain.data_dir': path('TFDS data_dir of imagenet2012'),
    'pretrain.manual_dir': path('the ImageNet download (imagenet2012) or class folders'),
    'pretrain.steps': integer(1, fix='e.g. pretrain.steps=300'),
    'pretrain.batch': integer(1, fix='e.g. pretrain.batch=32'),
    'pretrain.base_lr': number(0, lo_open=True, fix='e.g. 0.01'),
    'pretrain.momentum': number(0, 1, hi_open=True, fix='e.g. 0.9'),
    'pretrain.weight_decay': number(0, fix='e.g. 5e-4'),
    'pretrain.lr_decay': number(0, 1, lo_open=True, fix='e.g. 0.8'),
    'pretrain.crop_area': numbers(0, 1, lo_open=True, length=2, increasing=True,
                                  fix='(smallest, largest) share of the photo, e.g. (0.02, 0.5)'),
    'pretrain.grey_prob': number(0, 1, fix='e.g. 0.3'),
    'pretrain.eval_examples': integer(1, fix='e.g. 512'),
    'pretrain.eval_every': integer(1, fix=_EVERY.format(key='pretrain.eval_every')),
    'pretrain.log_every': integer(1, fix=_EVERY.format(key='pretrain.log_every')),
    'pretrain.checkpoint_every': integer(1, fix=_EVERY.format(key='pretrain.checkpoint_every')),
    'pretrain.seed': integer(0, fix='e.g. pretrain.seed=0'),
    'pretrain.workers': integer(1, fix='host threads, e.g. 2'),
}


# ---- checking ----------------------------------------------------------------------------


def _fail(key: str, value: Any, valid: str, fix: str) -> ConfigError:
  return ConfigError(f'config field {key}={value!r} is invalid: expected {valid}.'
                     + (f' Fix: {fix}.' if fix else ''))


def fields(config: Mapping) -> dict[str, Any]:
  """The config's leaves by dotted name; a mapping that has a rule of its own is one leaf."""
  out = {}

  def walk(node: Mapping, prefix: str) -> None:
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, Mapping) and name not in RULES:
        walk(value, name + '.')
      else:
        out[name] = value
  walk(config, '')
  return out


def check_config(config: Any, mode: str = 'train') -> None:
  """Raises ConfigError for the first field outside its range (TypeError for a non-config).

  `mode` (train, sweep, auto, pretrain) selects the cross-field rules that apply.
  """
  if not isinstance(config, ml_collections.ConfigDict):
    raise TypeError(f'config must be an ml_collections.ConfigDict (as medft/configs/<app>.py '
                    f'get_config() returns), not {type(config).__name__}; e.g. '
                    'medft.configs.cimt.get_config("synthetic").')
  if mode not in MODES:
    raise ValueError(f'mode={mode!r}: expected one of {MODES}.')
  leaves = fields(config.to_dict())
  for key, value in leaves.items():
    rule = RULES.get(key)
    if rule is None:
      logging.warning('config field %s=%r is not a medft setting (not in medft.validate.RULES);'
                      ' it is ignored.', key, value)
      continue
    if not rule.test(value):
      raise _fail(key, value, rule.valid, rule.fix)
  _cross_checks(config, leaves, mode)


def _cross_checks(config: ml_collections.ConfigDict, leaves: dict[str, Any], mode: str) -> None:
  arch = config.get('arch')
  train = config.get('train')
  keep_head = leaves.get('model.keep_head', False)
  if keep_head:
    _check_keep_head(config, mode)
  if train is not None and mode != 'pretrain' and not (keep_head and mode == 'train'):
    if train.get('steps', 1) <= 0 and train.get('epochs', 0) <= 0:
      raise ConfigError(f'config fields train.steps={train.get("steps")} and train.epochs='
                        f'{train.get("epochs")}: the run would not train at all. Fix: give '
                        'steps > 0 (e.g. steps=300) or epochs > 0.')
  _check_data_app(config, leaves)
  _sources().parse(leaves.get('sweep.sources', ''))  # each entry's syntax, named by entry
  val, test = leaves.get('data.val_share'), leaves.get('data.test_share')
  if val is not None and test is not None and val + test >= 1:
    raise ConfigError(f'config fields data.val_share={val} and data.test_share={test} leave no '
                      'training subjects (their sum must be below 1). Fix: e.g. 0.2 and 0.5.')
  _check_num_classes(leaves)
  fp, top = leaves.get('task.fp_rates'), leaves.get('task.froc_max_fp')
  if fp and top is not None and max(fp) > top:
    raise _fail('task.froc_max_fp', top, f'at least max(task.fp_rates) = {max(fp):g}',
                'raise task.froc_max_fp or lower task.fp_rates')
  if arch is None:
    return
  if mode != 'pretrain' and 'depth' in leaves:
    from medft.sweep import all_arms  # noqa: PLC0415  (the study's arms live there)
    known = tuple(a for a in all_arms(config) if a != 'layerwise')  # a sweep's arm only
    if config.depth == 'layerwise':
      raise _fail('depth', config.depth, 'scratch or one of ' + ', '.join(known[1:]),
                  f'layerwise is an arm of a sweep; for one run use depth={known[-1]} with '
                  '--config.optim.layer_decay=0.65')
    if config.depth not in known:
      raise _fail('depth', config.depth, 'scratch or one of ' + ', '.join(known[1:]),
                  f'choose scratch or one of {", ".join(known)}')
  if mode == 'sweep':
    _check_arms(config)
    from medft.sweep import source_paths  # noqa: PLC0415  (each entry an artifact of arch)
    source_paths(config)
  if mode == 'auto' and _sources().names(leaves.get('sweep.sources', '')):
    raise _fail('sweep.sources', leaves['sweep.sources'], '"" for auto (it deepens one '
                'source\'s fine-tuning)', 'set sweep.sources="" and init=<one of its paths>')
  size = leaves.get('input_size')
  if size is not None:
    width = leaves.get('model.width', 1.0)
    if not _accepts(arch, width, size):
      smallest = min_input_size(arch, width)
      raise _fail('input_size', size, f'at least {smallest} for {arch} at model.width='
                  f'{width:g} (a smaller input leaves an empty feature map)',
                  f'set --config.input_size={smallest} or more (the paper: 227)')


def _check_keep_head(config: ml_collections.ConfigDict, mode: str) -> None:
  """model.keep_head loads a fine-tuned model into one run: it needs init= and a depth that
  loads weights (train.steps=0 then only evaluates it)."""
  if mode != 'train':
    raise _fail('model.keep_head', True, 'False for a sweep or auto run (every arm starts '
                'from the source model with a new head)', 'evaluate an exported model with '
                'one run: medft.train / --mode=train')
  if not config.get('init'):
    raise _fail('model.keep_head', True, 'True only with init= (the model whose head is kept)',
                'pass init=<an export of a run, python -m medft.weights.export>')
  from medft.tuning import is_scratch  # noqa: PLC0415  (the one reading of arm names)
  if is_scratch(str(config.get('depth', ''))):
    raise _fail('model.keep_head', True, 'True only with a depth other than scratch (scratch '
                'loads no weights)', 'set e.g. depth=fc8 (with train.steps=0 nothing trains)')


def _check_num_classes(leaves: dict[str, Any]) -> None:
  """num_classes (the network's outputs) against the classes the data will have, where the
  config says so: a class map (data.classes) or the frames twin's data.synthetic_classes."""
  twin = leaves.get('data.name') in ('synthetic_frames', 'synthetic_frames_folder')
  k = leaves.get('data.synthetic_classes', 2)
  if k != 2 and not twin:
    raise _fail('data.synthetic_classes', k, '2 unless data.name is synthetic_frames (only the '
                'frames twin has a class count)', 'leave data.synthetic_classes at 2')
  classes, n = leaves.get('data.classes'), leaves.get('num_classes')
  if str(leaves.get('data.name', '')).startswith('manifest_'):
    classes = None  # a manifest's classes are its labels (checked against num_classes by the run)
  if classes:
    k, source = max(classes.values()) + 1, f'data.classes ({len(classes)} names)'
  elif twin:
    source = 'data.synthetic_classes'
  else:
    return
  if n is not None and n != k:
    raise ConfigError(f'config field num_classes={n} but the data will have {k} classes '
                      f'({source}). Fix: set num_classes={k} (configs/frames.py: classes={k}).')


# A task field that only one application's config sets: what tells a config's application.
APP_TASK_FIELDS = {'frames': 'crops_per_frame', 'polyp': 'generator', 'pe': 'vessel_hu',
                   'cimt': 'roi_height_mm'}


def _check_data_app(config: ml_collections.ConfigDict, leaves: dict[str, Any]) -> None:
  """data.name must yield the examples of the config's application (e.g. a classification
  manifest with configs/frames.py), or the task would meet examples it cannot read."""
  task, name = config.get('task'), leaves.get('data.name')
  if not name or task is None:
    return
  config_app = next((app for app, field in APP_TASK_FIELDS.items() if field in task), None)
  from medft.data.dataset import app_of  # noqa: PLC0415  (the builders' registry)
  data_app = app_of(name)
  if config_app and data_app and config_app != data_app:
    raise _fail('data.name', name, f'a dataset of the {config_app} application (this config is '
                f'configs/{config_app}.py; {name} yields {data_app} examples)',
                f'run it with --config=configs/{data_app}.py, or pick a {config_app} dataset')


def _check_arms(config: ml_collections.ConfigDict) -> None:
  from medft.sweep import all_arms  # noqa: PLC0415
  raw = config.get('sweep', {}).get('arms', '') if config.get('sweep') else ''
  items = _items(raw)
  known = all_arms(config)
  if raw and not items:
    raise _fail('sweep.arms', raw, 'at least one arm', f'choose from {", ".join(known)}')
  duplicates = sorted({a for a in items if items.count(a) > 1})
  if duplicates:
    raise _fail('sweep.arms', raw, 'arms without duplicates',
                f'list {", ".join(duplicates)} once')
  unknown = [a for a in items if a not in known]
  if unknown:
    raise _fail('sweep.arms', raw, f'arms of {config.arch}: {", ".join(known)}',
                f'remove {", ".join(unknown)} (not arms of {config.arch})')


# ---- the smallest input of each architecture ----------------------------------------------


@functools.lru_cache(maxsize=None)
def _accepts(arch: str, width: float, size: int) -> bool:
  """Whether `arch` maps a size x size input to logits with no empty array on the way.

  Traced, not run: every intermediate array of the forward pass (convolutions, pools,
  reshapes, nested calls) is an output of an equation of its jaxpr.
  """
  import jax
  import jax.numpy as jnp

  from medft.models import get_model
  model, _ = get_model(arch, 2, width=width)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  try:
    variables = jax.eval_shape(lambda v: model.init(jax.random.key(0), v, train=False), x)
    traced = jax.make_jaxpr(lambda p, v: model.apply(p, v, train=False))(variables, x)
  except (TypeError, ValueError):  # a negative or empty window: lax refuses the shape
    return False
  return all(0 not in shape for shape in _shapes(traced.jaxpr))


def _shapes(jaxpr) -> list[tuple[int, ...]]:
  """The shapes of every equation output of `jaxpr` and of the jaxprs nested in it."""
  out = []
  for eqn in jaxpr.eqns:
    out += [tuple(getattr(v.aval, 'shape', ())) for v in eqn.outvars]
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, 'jaxpr', sub)  # a ClosedJaxpr holds its Jaxpr
        if hasattr(inner, 'eqns'):
          out += _shapes(inner)
  return out


@functools.lru_cache(maxsize=None)
def min_input_size(arch: str, width: float = 1.0) -> int:
  """The smallest square input `arch` accepts, by bisection over shape computations."""
  lo, hi = 1, 256  # lo may fail, hi is assumed to work (every network here takes 224-227)
  if _accepts(arch, width, lo):
    return lo
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if _accepts(arch, width, mid):
      hi = mid
    else:
      lo = mid
  return hi


def describe() -> str:
  """The table as text: one line per field (what `python -m medft.validate` prints)."""
  return '\n'.join(f'{key:28s} {rule.valid}' + (f'  ({rule.fix})' if rule.fix else '')
                   for key, rule in RULES.items())


if __name__ == '__main__':
  print(describe())
