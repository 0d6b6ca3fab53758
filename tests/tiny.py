"""A tiny CIMT configuration for tests: width-reduced AlexNet, 67x67 input, few steps."""

import ml_collections

from configs import cimt


def config(data_dir, steps: int = 30, depth: str = 'scratch',
           init: str = '') -> ml_collections.ConfigDict:
  c = cimt.get_config(f'synthetic,depth={depth},steps={steps},batch=8')
  c.init = init
  c.data.data_dir = str(data_dir)
  c.model.width = 0.125
  c.model.init_scheme = 'he'
  c.input_size = 67
  c.task.patch_size = 32
  c.task.eval_patches_per_class = 10
  # The test scan (dense ROI classification) was most of a tiny run's time: a 2 mm box (it
  # holds every synthetic wall) and every 16th column.
  c.task.eval_col_stride = 16
  c.task.roi_height_mm = 2.0
  c.optim.base_lr = 0.003
  c.train.eval_every = 10
  c.train.log_every = 5
  c.train.checkpoint_every = 5
  c.train.patience = 100
  c.train.workers = 1
  return c


def pretext_config(steps: int = 4) -> ml_collections.ConfigDict:
  """A tiny source-model pretraining (pretext crops, width-reduced AlexNet, no dropout)."""
  from configs import imagenet_pretrain
  c = imagenet_pretrain.get_config(f'source=pretext,steps={steps},batch=8,input_size=67')
  c.model.width, c.model.init_scheme, c.model.dropout = 0.125, 'he', 0.0
  c.pretrain.update(eval_examples=8, log_every=2, eval_every=steps, checkpoint_every=2,
                    workers=1)
  return c
