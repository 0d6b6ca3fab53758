"""Polyp detection: classify candidate boxes of colonoscopy frames (Tajbakhsh et al. 2016).

Classes: 0 not a polyp, 1 polyp. Candidates come from blobs plus a coarse grid on the frame
(`task.generator`); each is scored by the mean probability over its augmented views, and the
test split is scored by FROC (sensitivity at 0.01 and 0.001 false positives per frame) and
candidate ROC AUC, with 95% bootstrap intervals over units (sequences; Kvasir frames).

Train one arm on the offline synthetic polyp frames (prints validation AUC, writes results):
  python run.py --config=configs/polyp.py:synthetic,depth=scratch,steps=300 --workdir=/tmp/polyp

On Kvasir-SEG (download it first; the error message says how), fine-tuning from converted
weights:
  python run.py --config=configs/polyp.py:depth=fc7,init=/path/to/bvlc_alexnet_medft \
      --config.data.manual_dir=/path/to/kvasir-seg --workdir=runs/polyp_fc7
"""

from medft.configs import common


def get_config(arg=None):
  arg = common.app_args(arg)
  # Two classes: background candidate, polyp.
  c = common.app_config(arg, 2, 'synthetic_polyp' if arg.synthetic else 'kvasir_seg')
  # A fraction counts videos (the paper's 100/50/25% of videos; the synthetic twin has
  # CVC-ClinicDB's video sequences). Kvasir-SEG has no video ids, each frame is its own unit,
  # so there it counts frames; with data.name=cvc_clinicdb set data.fraction_unit=videos.
  c.data.fraction_unit = 'videos' if arg.synthetic else 'frames'
  # Side of the square patch a view is resampled to (pixels); resized to the net's input.
  c.task.patch_size = 64
  # Frames are stored downscaled so that their longer side is at most this (pixels).
  c.task.frame_max_side = 512
  # Candidate generator: dog (difference-of-Gaussians blobs), grid (tiled boxes), or a union
  # joined by '+'. dog alone hits ~89% of held-out Kvasir-SEG lesions (it finds no blob maximum
  # inside many large smooth polyps); dog+grid ~97% at ~32 candidates/frame (at most 15 + 25 on
  # a square frame, 15 + 35 on a 4:3 one). Table: docs/candidate_recall_kvasir.md.
  c.task.generator = 'dog+grid'
  # dog: longer side of the downscaled copy the blob detector runs on (pixels).
  c.task.work_size = 128
  # dog: blob scales as fractions of the frame's shorter side.
  c.task.blob_sigmas = (0.02, 0.035, 0.05, 0.07, 0.1)
  # dog: strongest local maxima kept per frame.
  c.task.max_candidates = 15
  # dog: minimum distance between two candidates, as a fraction of the shorter side.
  c.task.min_distance = 0.04
  # grid: box sides as fractions of the frame's shorter side, tiled with half-box strides
  # (0.3125: 5 x 5 boxes on a square frame, 5 x 7 on a 4:3 one).
  c.task.grid_box_fracs = (0.3125,)
  # Candidates whose centre is darker than this (5x5 mean, 0..1) are dropped: frame border and
  # overlays (0 keeps all).
  c.task.min_brightness = 0.1
  # Union: a later generator's candidate is dropped when a kept centre lies within this
  # fraction of its box side (0 keeps all).
  c.task.dedup_frac = 0.25
  # Smallest box side (pixels of the stored frame).
  c.task.min_box = 8.0
  # Also train on one box per mask component (positives the generator may have missed).
  c.task.train_on_boxes = False
  # Views: crop side = scale x box side (paper: 1.0, 1.2, 1.5).
  c.task.scales = (1.0, 1.2, 1.5)
  # Views: shifts of `shift_frac` box sides times each step, on both axes (paper: 10%).
  c.task.shift_frac = 0.1
  c.task.shift_steps = (-1, 0, 1)
  # Views: orientations, 1..8 (4 rotations x mirror; paper: 8).
  c.task.orientations = 8
  # Validation AUC: centre views of at most this many candidates.
  c.task.val_max_patches = 4000
  # Test: patches per predict call (memory bound on the host).
  c.task.eval_chunk = 4096
  # Validation and test views cut where the network runs ('device', medft/tasks/device_views.py:
  # the host path's patches to float tolerance, at the network's speed) or by scipy ('host').
  c.task.views_on = 'device'
  # FROC operating points (false positives per frame) reported with CIs.
  c.task.fp_rates = (0.01, 0.001)
  # FROC curve sampled on [0, froc_max_fp] FP/frame.
  c.task.froc_max_fp = 0.1
  # Study blocks: sweep (arms x fractions x seeds), auto (depth choice), pretrain.
  common.add_study(c, arg, fractions='0.25,0.5,1.0')
  common.apply_presets(c, arg)
  return c
