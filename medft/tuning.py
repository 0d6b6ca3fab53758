"""Layer-wise fine-tuning: which units train, with which learning rate.

An arm is `scratch` or the name of a tuning unit: depth `conv4` trains conv4 and every unit
above it and freezes the rest. The optimizer is an `optax.multi_transform` over a label tree;
frozen leaves get `optax.set_to_zero()`, so they receive exactly zero updates and carry no
optimizer state. The defaults are the paper's rules (Tajbakhsh et al. 2016, Sec. III):
SGD with momentum 0.9, lr 0.001 for every tuned layer, 0.01 for the new head when
fine-tuning (0.001 from scratch), biases at twice their layer's lr, lr x 0.95 once per epoch.
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
# Scratch arms under a named init scheme (`scratch_xavier`: depth scratch, model.init_scheme
# xavier); plain `scratch` keeps the config's model.init_scheme (BVLC Gaussian by default).
INIT_SCHEMES = ('gaussian', 'xavier', 'he')


def scratch_arms() -> tuple[str, ...]:
  return (SCRATCH,) + tuple(f'{SCRATCH}_{s}' for s in INIT_SCHEMES)


def arms(units: Sequence[str], scratch_schemes: bool = False) -> tuple[str, ...]:
  """The arms of an architecture in the paper's order: scratch, then the head only, deepening
  to all units (each a depth). `scratch_schemes=True` adds scratch under each init scheme
  after `scratch` (`scratch_xavier`, ...): every arm name a sweep accepts."""
  scratch = scratch_arms() if scratch_schemes else (SCRATCH,)
  return scratch + tuple(reversed(units))


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


def param_labels(params: Any, units: Sequence[str], depth: str) -> Any:
  """Label tree: `frozen`, or `<unit>/{weight,bias}` role names for the optimizer."""
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
      labels[path] = f'{"head" if unit == head else "body"}_{kind}'
  return traverse_util.unflatten_dict(labels, sep='/')


def learning_rates(optim: Any, depth: str) -> dict[str, float]:
  """Per-label base learning rates from the config's paper rules."""
  head = optim.base_lr * (optim.head_lr_mult if depth != 'scratch' else 1.0)
  return {
      'body_weight': optim.base_lr,
      'body_bias': optim.base_lr * optim.bias_lr_mult,
      'head_weight': head,
      'head_bias': head * optim.bias_lr_mult,
  }


def lr_schedule(lr: float, decay: float, steps_per_decay: int) -> optax.Schedule:
  """`lr` x `decay` once every `steps_per_decay` steps (staircase): what the optimizer applies
  at a step, and what the training loop logs (`optim.base_lr` with `make_optimizer`'s
  steps per epoch is the body's rate)."""
  return optax.exponential_decay(lr, transition_steps=max(1, steps_per_decay),
                                 decay_rate=decay, staircase=True)


def make_optimizer(params: Any, units: Sequence[str], depth: str, optim: Any,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD + momentum per label group; weight decay on weights only (BVLC decay_mult 0 on biases).

  The learning rate is multiplied by `optim.lr_decay_per_epoch` once per epoch (staircase).
  """
  labels = param_labels(params, units, depth)
  transforms = {FROZEN: optax.set_to_zero()}
  for label, lr in learning_rates(optim, depth).items():
    schedule = lr_schedule(lr, optim.lr_decay_per_epoch, steps_per_epoch)
    parts = []
    if label.endswith('weight') and optim.weight_decay:
      parts.append(optax.add_decayed_weights(optim.weight_decay))
    parts.append(optax.sgd(schedule, momentum=optim.momentum))
    transforms[label] = optax.chain(*parts)
  return optax.multi_transform(transforms, labels)


def log_labels(params: Any, units: Sequence[str], depth: str) -> None:
  """Logs the label of every parameter once, so a frozen layer is visible in the log."""
  flat = traverse_util.flatten_dict(param_labels(params, units, depth), sep='/')
  for path, label in flat.items():
    logging.info('param %-32s %s', path, label)


def reinit_head(params: Any, fresh: Any, head: str) -> Any:
  """Fine-tuning arm: the head comes from a fresh init (Gaussian std 0.01, bias 0)."""
  out = dict(params)
  out[head] = jax.tree.map(np.asarray, fresh[head])
  return out
