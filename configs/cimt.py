"""CIMT: intima-media boundary segmentation as 3-class pixel classification (paper Sec. IV-D).

Classes: 0 background, 1 lumen-intima (LI) interface, 2 media-adventitia (MA) interface.
Test images are classified densely over the region of interest, the most probable LI and MA
row per column is smoothed into a boundary, and the error is reported in micrometres.

Train one arm on the offline synthetic carotid data (prints validation AUC, writes results):
  python run.py --config=configs/cimt.py:synthetic,depth=scratch,steps=300 --workdir=/tmp/cimt

On CUBS (download it first; the error message says how), fine-tuning from converted weights:
  python run.py --config=configs/cimt.py:depth=fc7,init=/path/to/bvlc_alexnet_medft \
      --config.data.manual_dir=/path/to/CUBS --workdir=runs/cimt_fc7
"""

import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(
      arg, depth='fc8', fraction=1.0, arch='alexnet', init='', steps=0, epochs=0.0, batch=0,
      seed=0, synthetic=False)
  c = common.base_config(arg)
  # Three classes: background, LI interface, MA interface.
  c.num_classes = 3
  c.data.name = 'synthetic_cimt' if arg.synthetic else 'cubs'

  c.task = ml_collections.ConfigDict()
  # Side of the square patch cut around a pixel (image pixels); resized to the net's input.
  c.task.patch_size = 48
  # Pixels within this distance of a boundary are neither background nor that boundary.
  c.task.boundary_margin = 2
  # Rows above LI and below MA added to the reference band to form the test ROI.
  c.task.roi_margin = 12
  # Test: classify every `eval_col_stride`-th ROI column (1 = every column, as the paper).
  c.task.eval_col_stride = 4
  # Validation/test patches per class per image for the patch-level AUC.
  c.task.eval_patches_per_class = 30
  # Nominal epoch: training patches per training image (the lr decays once per epoch).
  c.task.patches_per_image = 300
  # Boundary smoothing window in columns (median, then Gaussian sigma = window / 4).
  c.task.smooth_window = 9
  return c
