"""Your own ImageNet source model for any architecture (for users who hold the ImageNet data).

  python run.py --config=configs/imagenet_pretrain.py:arch=alexnet --mode=pretrain \
      --config.pretrain.manual_dir=/data/imagenet_tars --workdir=weights/alexnet_in1k

trains `arch` from scratch on ImageNet-1k (SGD, random-resized crops and flips) and writes the
converted-weights folder `weights/alexnet_in1k/weights` (meta.json + params/, source_format
`medft-imagenet2012`), which every app config takes as `init=weights/alexnet_in1k/weights`.
An interrupted run resumes from `weights/alexnet_in1k/checkpoints/latest`.

Data, and where TensorFlow is (and is not) needed:
  * source=imagenet2012 (default): TFDS `imagenet2012`, manual download (ILSVRC2012_img_train.tar
    and ILSVRC2012_img_val.tar in pretrain.manual_dir). medft READS the prepared data without
    TensorFlow (array_record data source, JPEG decoded with PIL). PREPARING it once from the
    tars runs TFDS' own imagenet2012 builder, which needs TensorFlow (tf.io.gfile and the
    CMYK/PNG fix-ups) and importlib_resources (not installed by TFDS 4.9). Either
    `pip install tensorflow-cpu importlib_resources` for that one step, or prepare elsewhere
    with `tfds build imagenet2012 --file_format=array_record --manual_dir=...` and point
    pretrain.data_dir at the result. (Not run end to end here: no ImageNet copy and no
    TensorFlow on the development machine; the folder source is tested on a tiny tree.)
  * source=folder: no TensorFlow at all. pretrain.manual_dir holds `train/<wnid>/*.JPEG`
    (ILSVRC2012_img_train.tar extracted, with its per-class tars extracted too).

The defaults are a short, single-host schedule (input 227, batch 256, 100k steps ~ 20 epochs);
the BVLC reference trained 450k steps at batch 256. On CPU this is impractical: use an
accelerator (the trainer pmaps over every local device).
"""

from medft.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, arch='alexnet', steps=100_000, batch=256, source='imagenet2012',
                         input_size=227, seed=0)
  c = common.base_config(common.parse_arg(f'arch={arg.arch},seed={arg.seed}', arch='alexnet',
                                          depth='scratch', init='', fraction=1.0, steps=0,
                                          epochs=0.0, batch=0, seed=0))
  # Network input (227 for BVLC AlexNet; the weights record it in meta.json).
  c.input_size = arg.input_size
  c.pretrain = common.pretrain_defaults(source=arg.source, steps=arg.steps, batch=arg.batch)
  # The BVLC solver: lr 0.01, x0.1 three times over the run; here lr x 0.8 ten times.
  c.pretrain.base_lr = 0.01
  c.pretrain.seed = arg.seed
  c.pretrain.eval_every = 5000
  c.pretrain.log_every = 100
  c.pretrain.checkpoint_every = 2000
  c.pretrain.eval_examples = 2048
  # Host threads decoding and cropping JPEGs (raise on a many-core host).
  c.pretrain.workers = 8
  return c
