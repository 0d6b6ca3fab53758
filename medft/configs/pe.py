"""Pulmonary embolism detection: classify clot candidates of CTPA volumes (Tajbakhsh et al. 2016).

Classes: 0 not a clot, 1 clot. Candidates are filling defects inside contrast-filled lung
vessels; each becomes a vessel-aligned two-plane image (cross-section, longitudinal cut) at
3 widths x 3 shifts along the vessel x 6 rotations, averaged at test time. The test split
is scored by FROC (sensitivity at 1-5 false positives per volume, their mean, the curve on
0-10 FP/volume) and candidate ROC AUC, with 95% bootstrap intervals over patients.

Train one arm on the offline synthetic CT volumes (prints validation AUC, writes results):
  python run.py --config=configs/pe.py:synthetic,depth=scratch,steps=300 --workdir=/tmp/pe

On CAD-PE (download it first; the error message says how), fine-tuning from converted weights:
  python run.py --config=configs/pe.py:depth=fc7,init=/path/to/bvlc_alexnet_medft \
      --config.data.manual_dir=/path/to/CAD-PE --workdir=runs/pe_fc7
"""

from medft.configs import common


def get_config(arg=None):
  arg = common.app_args(arg)
  # Two classes: false candidate, clot.
  c = common.app_config(arg, 2, 'synthetic_pe' if arg.synthetic else 'cad_pe')
  # A fraction counts patients (one CTPA volume each).
  c.data.fraction_unit = 'patients'
  # Side of the square vessel-aligned patch (pixels); resized to the net's input.
  c.task.patch_size = 32
  # Gaussian pre-smoothing of the volume before thresholding (mm).
  c.task.smooth_mm = 0.5
  # Contrast-filled vessel: smoothed HU above this.
  c.task.vessel_hu = 150.0
  # Filling defect: smoothed HU in this range, within `adjacent_mm` of a vessel. Clots are
  # 20-80 HU; the low end reaches -200 because thin clots blur into the lung around them.
  c.task.defect_hu = (-200.0, 120.0)
  c.task.adjacent_mm = 3.0
  # Opening radius that strips the thin partial-volume shell around vessels (mm; 0 = off).
  c.task.open_mm = 0.8
  # Closing radius of vessels plus defects, the tube whose axis is measured (mm).
  c.task.closing_mm = 2.0
  # Keep only vessels in the lungs (air-density regions not touching the border) or the hilum.
  c.task.lungs_only = True
  # Lung: smoothed HU below this.
  c.task.lung_hu = -400.0
  # Margin around the lungs that still counts (mm; the hilar arteries).
  c.task.hilum_mm = 10.0
  # Smallest candidate component (mm^3).
  c.task.min_volume_mm3 = 2.0
  # Largest components kept per volume.
  c.task.max_candidates = 100
  # Vessel axis: structure tensor derivative scale and integration window (mm).
  c.task.axis_derivative_mm = 1.0
  c.task.axis_window_mm = 3.0
  # Views: patch widths (mm; paper 10, 15, 20), shifts along the vessel (mm), rotations.
  c.task.widths_mm = (10.0, 15.0, 20.0)
  c.task.shifts_mm = (-2.0, 0.0, 2.0)
  c.task.rotations = 6
  # HU window mapped to 0..255.
  c.task.hu_window = (-250.0, 450.0)
  # Validation AUC: middle-width view of at most this many candidates.
  c.task.val_max_patches = 4000
  # Test: patches per predict call (memory bound on the host).
  c.task.eval_chunk = 4096
  # Validation and test views cut where the network runs ('device', medft/tasks/device_views.py:
  # the host path's patches to float tolerance, at the network's speed) or by scipy ('host').
  c.task.views_on = 'device'
  # FROC operating points (false positives per volume) reported with CIs; their mean too.
  c.task.fp_rates = (1.0, 2.0, 3.0, 4.0, 5.0)
  # FROC curve sampled on [0, froc_max_fp] FP/volume.
  c.task.froc_max_fp = 10.0
  # Study blocks: sweep (arms x fractions x seeds), auto (depth choice), pretrain. Training
  # sizes: the paper's 50% and 25% of patients, and 100% as the reference they are read against.
  common.add_study(c, arg, fractions='0.25,0.5,1.0')
  common.apply_presets(c, arg)
  return c
