"""Frame classification: informative vs non-informative colonoscopy frames (Tajbakhsh et al. 2016).

Classes: 0 non-informative, 1 informative. Training patches are random crops of the frames; a
test frame's score is the mean probability over 200 fixed random crops, scored by ROC AUC and
sensitivity at 10, 15 and 20% false positive rate, with 95% bootstrap intervals over videos.

Train one arm on the offline synthetic frames (prints validation AUC, writes results):
  python run.py --config=configs/frames.py:synthetic,depth=scratch,steps=300 --workdir=/tmp/frames

Three classes on the synthetic frames (the report then shows per-class AUCs, their macro mean
and confusion matrices):
  python run.py --config=configs/frames.py:synthetic,classes=3,depth=scratch,steps=300 \
      --workdir=/tmp/frames3

On your own frames in a <class>/<image> folder tree (frames_folder; set the class map and the
regex that finds the video id in a file name):
  python run.py --config=configs/frames.py:depth=fc7,init=/path/to/bvlc_alexnet_medft \
      --config.data.manual_dir=/path/to/frames --workdir=runs/frames_fc7
"""

from medft.configs import common


def get_config(arg=None):
  arg = common.app_args(arg, classes=2)
  # Classes (the network's outputs): the paper's two, non-informative 0 and informative 1; the
  # `classes=K` argument sets K (the data must have K: a class map with labels 0..K-1, or the
  # synthetic twin's data.synthetic_classes).
  c = common.app_config(arg, arg.classes,
                        'synthetic_frames' if arg.synthetic else 'frames_folder')
  # frames_folder: class folder -> label (for K > 2 classes give your own map; a manifest's
  # labels are its map). The synthetic twin has data.synthetic_classes classes and, for K > 2,
  # its own map (tinted_2, ...).
  if arg.synthetic:
    c.data.synthetic_classes = arg.classes
  if arg.classes == 2:
    c.data.classes = {'informative': 1, 'non_informative': 0}
  # The regex whose first group is the video id in a file name.
  c.data.unit_regex = r'^(vid\d+)_'
  # A fraction counts frames of the training videos (the paper's 100/10/5/1% of frames); the
  # split, and so every test statistic, stays by video.
  c.data.fraction_unit = 'frames'

  # Side of a random crop (pixels; paper: 227 from 500x350 frames; the synthetic ones are
  # 128x128).
  c.task.crop_size = 96 if arg.synthetic else 227
  # Nominal epoch: training crops per training frame (paper: 200).
  c.task.crops_per_frame = 200
  # Train on one fixed draw of `crops_per_frame` crops per frame (what lets
  # train.feature_cache serve repeats); False = fresh crops every step.
  c.task.fixed_pool = False
  # Draw a class first, then a training frame of it (every class equally likely: a
  # class-stratified training set); False = every training frame equally likely (as before).
  c.task.class_balanced = False
  # Test: fixed random crops averaged per frame (paper: 200).
  c.task.test_crops = 200
  # Validation AUC: fixed crops per frame.
  c.task.val_crops_per_frame = 4
  # False positive rates at which sensitivity is reported with CIs.
  c.task.fprs = (0.10, 0.15, 0.20)
  # Study blocks: sweep (arms x fractions x seeds), auto (depth choice), pretrain. Training
  # sizes: the paper's 100, 10, 5 and 1% of the training frames (1% needs >= 50 of them).
  common.add_study(c, arg, fractions='0.01,0.05,0.1,1.0')
  common.apply_presets(c, arg)
  return c
