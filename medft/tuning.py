"""Layer-wise fine-tuning: which units train, with which learning rate.

An arm is `scratch` or the name of a tuning unit: depth `conv4` trains conv4 and every unit
above it and freezes the rest. The optimizer is an `optax.multi_transform` over a label tree;
frozen leaves get `optax.set_to_zero()`, so they receive exactly zero updates and carry no
optimizer state. The defaults are the paper's rules (Tajbakhsh et al. 2016, Sec. III):
SGD with momentum 0.9, lr 0.001 for every tuned layer, 0.01 for the new head when
fine-tuning (0.001 from scratch), biases at twice their layer's lr, lr x 0.95 once per epoch.

Layer-wise learning-rate decay (`optim.layer_decay` = f < 1; 1.0, the default, is off and
leaves everything above exactly as it is) is the soft alternative to freezing used to
fine-tune ViTs (BEiT, MAE): the head keeps its rate, the unit below it learns at
base_lr x f, the next at base_lr x f^2, and so on down. It applies to the trained units of a
fine-tuning arm (frozen units stay frozen), so the arm of the lowest unit (`embed` of
`vit_b16`, `conv1` of AlexNet) with f < 1 is the usual decayed fine-tuning of every layer;
scratch arms ignore it (nothing there is pretrained).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from medft.errors import ConfigError

FROZEN = 'frozen'


SCRATCH = 'scratch'
# The layer-decay arm of a sweep: every unit trains (depth = the lowest unit) under
# optim.layer_decay = sweep.layer_decay (`medft.sweep.run_config`); not a depth of one run.
LAYERWISE = 'layerwise'
# Scratch arms under a named init scheme (`scratch_xavier`: depth scratch, model.init_scheme
# xavier); plain `scratch` keeps the config's model.init_scheme (BVLC Gaussian by default).
INIT_SCHEMES = ('gaussian', 'xavier', 'he')


def scratch_arms() -> tuple[str, ...]:
  return (SCRATCH,) + tuple(f'{SCRATCH}_{s}' for s in INIT_SCHEMES)


def arms(units: Sequence[str], scratch_schemes: bool = False) -> tuple[str, ...]:
  """The arms of an architecture in the paper's order: scratch, then the head only, deepening
  to all units (each a depth). `scratch_schemes=True` adds scratch under each init scheme
  after `scratch` (`scratch_xavier`, ...) and the layer-decay arm `layerwise` last: every arm
  name a sweep accepts."""
  if not scratch_schemes:
    return (SCRATCH,) + tuple(reversed(units))
  return scratch_arms() + tuple(reversed(units)) + (LAYERWISE,)


def arm_settings(arm: str) -> tuple[str, str | None]:
  """(depth, init scheme or None = the config's) of an arm name."""
  if arm.startswith(f'{SCRATCH}_') and arm[len(SCRATCH) + 1:] in INIT_SCHEMES:
    return SCRATCH, arm[len(SCRATCH) + 1:]
  return arm, None


def is_scratch(arm: str) -> bool:
  return arm_settings(arm)[0] == SCRATCH


def trained_units(units: Sequence[str], depth: str) -> tuple[str, ...]:
  """Units that train in arm `depth` (everything for `scratch`)."""
  if depth == 'scratch':
    return tuple(units)
  if depth not in units:
    raise ConfigError(f'depth={depth!r} is not a tuning unit of this architecture; choose '
                      f'scratch or one of {", ".join(units)}.')
  return tuple(units[units.index(depth):])


def layer_decay(optim: Any, depth: str) -> float:
  """The arm's layer-wise lr decay factor: `optim.layer_decay`, 1.0 (off) when the config
  has none and for scratch arms."""
  return 1.0 if depth == SCRATCH else float(optim.get('layer_decay', 1.0))


def param_labels(params: Any, units: Sequence[str], depth: str, per_unit: bool = False) -> Any:
  """Label tree: `frozen`, or `{body,head}_{weight,bias}` role names for the optimizer;
  with `per_unit` (layer decay) each trained body unit has its own `<unit>_{weight,bias}`."""
  trained = trained_units(units, depth)
  head = units[-1]
  flat = traverse_util.flatten_dict(params, sep='/')
  labels = {}
  for path in flat:
    unit = next((u for u in units if re.fullmatch(re.escape(u) + r'(/.*)?', path)), None)
    if unit is None:
      raise ValueError(f'parameter {path!r} belongs to no tuning unit ({", ".join(units)}); '
                       'every parameter must be labelled.')
    if unit not in trained:
      labels[path] = FROZEN
    else:
      kind = 'bias' if path.endswith('bias') else 'weight'
      role = 'head' if unit == head else (unit if per_unit else 'body')
      labels[path] = f'{role}_{kind}'
  return traverse_util.unflatten_dict(labels, sep='/')


def learning_rates(optim: Any, depth: str, units: Sequence[str] = ()) -> dict[str, float]:
  """Per-label base learning rates from the config's paper rules; with layer decay
  (`layer_decay` < 1 and the architecture's `units`) one rate per body unit instead of
  `body_*`: base_lr x decay^k for the unit k places below the head."""
  head = optim.base_lr * (optim.head_lr_mult if depth != 'scratch' else 1.0)
  rates = {'head_weight': head, 'head_bias': head * optim.bias_lr_mult}
  decay = layer_decay(optim, depth)
  if decay == 1.0 or not units:
    return {'body_weight': optim.base_lr, 'body_bias': optim.base_lr * optim.bias_lr_mult,
            **rates}
  for k, unit in enumerate(reversed(units[:-1]), start=1):
    lr = optim.base_lr * decay ** k
    rates.update({f'{unit}_weight': lr, f'{unit}_bias': lr * optim.bias_lr_mult})
  return rates


def lr_schedule(lr: float, decay: float, steps_per_decay: int) -> optax.Schedule:
  """`lr` x `decay` once every `steps_per_decay` steps (staircase): what the optimizer applies
  at a step, and what the training loop logs (`optim.base_lr` with `make_optimizer`'s
  steps per epoch is the body's rate)."""
  return optax.exponential_decay(lr, transition_steps=max(1, steps_per_decay),
                                 decay_rate=decay, staircase=True)


def make_optimizer(params: Any, units: Sequence[str], depth: str, optim: Any,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD + momentum per label group; weight decay on weights only (BVLC decay_mult 0 on biases).

  The learning rate is multiplied by `optim.lr_decay_per_epoch` once per epoch (staircase);
  with `optim.layer_decay` < 1 each trained unit has its own rate (`learning_rates`).
  """
  per_unit = layer_decay(optim, depth) != 1.0
  labels = param_labels(params, units, depth, per_unit)
  present = set(jax.tree.leaves(labels))
  transforms = {FROZEN: optax.set_to_zero()}
  for label, lr in learning_rates(optim, depth, units if per_unit else ()).items():
    if per_unit and label not in present:  # a frozen unit's rate
      continue
    schedule = lr_schedule(lr, optim.lr_decay_per_epoch, steps_per_epoch)
    parts = []
    if label.endswith('weight') and optim.weight_decay:
      parts.append(optax.add_decayed_weights(optim.weight_decay))
    parts.append(optax.sgd(schedule, momentum=optim.momentum))
    transforms[label] = optax.chain(*parts)
  return optax.multi_transform(transforms, labels)


def log_labels(params: Any, units: Sequence[str], depth: str, optim: Any = None) -> None:
  """Logs the label of every parameter once, so a frozen layer is visible in the log (and
  with layer decay, each unit's own label)."""
  per_unit = optim is not None and layer_decay(optim, depth) != 1.0
  flat = traverse_util.flatten_dict(param_labels(params, units, depth, per_unit), sep='/')
  for path, label in flat.items():
    logging.info('param %-32s %s', path, label)
  if per_unit:
    present = set(flat.values())
    for label, lr in learning_rates(optim, depth, units).items():
      if label in present:
        logging.info('layer_decay %s: lr %-24s %.4g', optim.layer_decay, label, lr)


def reinit_head(params: Any, fresh: Any, head: str) -> Any:
  """Fine-tuning arm: the head comes from a fresh init (Gaussian std 0.01, bias 0)."""
  out = dict(params)
  out[head] = jax.tree.map(np.asarray, fresh[head])
  return out
