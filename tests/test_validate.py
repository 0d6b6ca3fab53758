"""`medft.validate`: every config field has a stated range, bad values are refused by name
before anything is written, and the smallest input size comes from the model itself."""

import ml_collections
import pytest
import reference_numpy as ref

import medft
from configs import cimt, frames, imagenet_pretrain, pe, polyp
from medft import errors, validate
from medft.models import ARCHS

APP_CONFIGS = [(m, arg) for m in (cimt, frames, pe, polyp)
               for arg in ('', 'synthetic', 'synthetic,tpu', 'synthetic,arms=scratch+fc8'
                           if m is not cimt else 'demo')]


@pytest.mark.parametrize('module,arg', APP_CONFIGS, ids=[f'{m.__name__}:{a}' for m, a in
                                                         APP_CONFIGS])
def test_every_field_of_the_shipped_configs_has_a_rule_and_passes(module, arg):
  config = module.get_config(arg)
  missing = sorted(set(validate.fields(config.to_dict())) - set(validate.RULES))
  assert not missing, f'fields without a rule in medft.validate.RULES: {missing}'
  for mode in ('train', 'sweep', 'auto', 'pretrain'):
    validate.check_config(config, mode)


def test_the_pretraining_config_passes():
  config = imagenet_pretrain.get_config()
  assert not set(validate.fields(config.to_dict())) - set(validate.RULES)
  validate.check_config(config, 'pretrain')


def test_the_table_documents_every_rule():
  text = validate.describe()
  assert len(text.splitlines()) == len(validate.RULES)
  assert 'model.dropout' in text and 'in [0, 1)' in text


# (field or None for a config argument, value, substrings the message must hold)
BAD = [
    ('train.steps', -5, ['train.steps=-5', 'an integer >= 0']),
    ('train.steps', 0, ['train.steps=0', 'train.epochs=0.0', 'would not train']),
    ('train.epochs', -1.0, ['train.epochs=-1.0', '>= 0']),
    ('train.patience', 0, ['train.patience=0', '>= 1']),
    ('train.eval_every', 0, ['train.eval_every=0', '>= 1']),
    ('train.log_every', -1, ['train.log_every=-1']),
    ('train.checkpoint_every', 0, ['train.checkpoint_every=0']),
    ('train.batch', 0, ['train.batch=0']),
    ('train.workers', 0, ['train.workers=0']),
    ('model.dropout', 1.5, ['model.dropout=1.5', 'in [0, 1)']),
    ('model.dropout', 1.0, ['model.dropout=1.0', 'in [0, 1)']),
    ('model.init_scheme', 'kaiming', ["'kaiming'", '"", gaussian, xavier or he']),
    ('model.group_impl', 'fast', ["'fast'", 'auto, split or xla']),
    ('dtype', 'float17', ["dtype='float17'", 'float32, bfloat16 or float16']),
    ('input_size', 16, ['input_size=16', 'at least 39 for alexnet']),
    ('seed', -1, ['seed=-1', '>= 0']),
    ('data.split_seed', -3, ['data.split_seed=-3']),
    ('data.val_share', 0.0, ['data.val_share=0.0', 'in (0, 1)']),
    ('data.test_share', 1.0, ['data.test_share=1.0', 'in [0, 1)']),
    ('data.val_share', 0.8, ['data.val_share=0.8', 'data.test_share=0.5', 'below 1']),
    ('data.fraction', 0.0, ['data.fraction=0.0', 'in (0, 1]']),
    ('optim.base_lr', float('inf'), ['optim.base_lr=inf', 'a finite number > 0']),
    ('optim.base_lr', 0.0, ['optim.base_lr=0.0']),
    ('optim.momentum', 1.0, ['optim.momentum=1.0', 'in [0, 1)']),
    ('task.patch_size', 2, ['task.patch_size=2', 'in [4, 4096]']),
    ('task.eval_col_stride', 0, ['task.eval_col_stride=0']),
    ('sweep.fractions', '', None),  # '' = the default: valid
    ('sweep.fractions', '0.5,0.5', ["sweep.fractions='0.5,0.5'", 'no duplicates']),
    ('sweep.fractions', '0.5+1.5', ["sweep.fractions='0.5+1.5'", 'in (0, 1]']),
    ('sweep.fractions', 'half', ["sweep.fractions='half'"]),
    ('sweep.seeds', '0,0', ["sweep.seeds='0,0'", 'no duplicates']),
    ('sweep.seeds', '-1', ["sweep.seeds='-1'", 'integers >= 0']),
    ('sweep.arms', 'fc8,fc8', ["sweep.arms='fc8,fc8'", 'without duplicates', 'list fc8 once']),
    ('sweep.arms', 'fc9', ["sweep.arms='fc9'", 'not arms of alexnet']),
    ('sweep.arms', ',', ["sweep.arms=','", 'at least one arm']),
    ('sweep.shard', '3/2', ["sweep.shard='3/2'", '0 <= i < n']),
    ('sweep.keep_checkpoints', 'bset', ["'bset'", 'all, best or none']),
    ('auto.patience', 0, ['auto.patience=0']),
    ('auto.tolerance', -0.1, ['auto.tolerance=-0.1']),
    ('pretrain.steps', 0, ['pretrain.steps=0']),
    ('pretrain.source', 'web', ["pretrain.source='web'", 'pretext, folder or imagenet2012']),
    ('pretrain.crop_area', (0.5, 0.1), ['pretrain.crop_area=(0.5, 0.1)', 'increasing']),
    ('pretrain.grey_prob', 2.0, ['pretrain.grey_prob=2.0', 'in [0, 1]']),
    ('depth', 'fc9', ["depth='fc9'", 'choose scratch or one of']),
    ('arch', 'vgg16', ["arch='vgg16'", 'choose one of alexnet']),
]


@pytest.mark.parametrize('field,value,named', BAD, ids=[f'{f}={v!r}' for f, v, _ in BAD])
def test_a_bad_value_is_refused_by_name_with_its_range(field, value, named):
  config = cimt.get_config('synthetic,pretext')
  *parents, leaf = field.split('.')
  node = config
  for name in parents:
    node = node[name]
  with node.ignore_type():
    node[leaf] = value
  if named is None:
    validate.check_config(config, 'sweep')
    return
  with pytest.raises(errors.ConfigError) as info:
    validate.check_config(config, 'sweep')
  message = str(info.value)
  for part in named:
    assert part in message, f'{part!r} not in: {message}'
  assert 'Fix: ' in message or 'Fix:' in message


def test_frames_unit_regex_must_compile():
  config = frames.get_config('synthetic')
  config.data.unit_regex = '(vid'
  with pytest.raises(errors.ConfigError, match=r"data.unit_regex='\(vid'.*regular expression"):
    validate.check_config(config)


def test_froc_range_must_cover_the_operating_points():
  config = pe.get_config('synthetic')
  config.task.froc_max_fp = 3.0
  with pytest.raises(errors.ConfigError, match=r'task.froc_max_fp=3.0.*max\(task.fp_rates\) = 5'):
    validate.check_config(config)


# The last feature map of each network by hand, with the NumPy reference's pooling rule:
# BVLC AlexNet (conv1 11/4, ceil-mode 3/2 pools after conv1, conv2, conv5), torchvision's
# (conv1 11/4 pad 2, floor-mode pools), SqueezeNet 1.1 as medft builds it (conv1 3/2,
# floor-mode pools after conv1, fire3, fire5). Other layers keep the size.
LAST_MAP = {
    'alexnet': lambda s: _pools((s - 11) // 4 + 1, 3, 'caffe'),
    'alexnet_torchvision': lambda s: _pools((s + 4 - 11) // 4 + 1, 3, 'floor'),
    'squeezenet1_1': lambda s: _pools((s - 3) // 2 + 1, 3, 'floor'),
    'vit_b16': lambda s: s // 16,  # the 16x16 patch grid
    # conv1 7x7/2 pad 3 and max pool 3x3/2 pad 1, then padded convs (ResNet) or three 2x2/2
    # average pools (DenseNet's transitions).
    **{a: lambda s: (((s - 1) // 2) // 2 + 1) if s > 0 else 0
       for a in ('resnet18', 'resnet50', 'resnet50_keras')},
    'densenet121': lambda s: ((((s - 1) // 2) // 2 + 1) // 8) if s > 0 else 0,
}


def _pools(side: int, count: int, mode: str) -> int:
  for _ in range(count):
    side = ref._pool_out(side, 3, 2, mode) if side > 0 else 0  # noqa: SLF001
  return side


# Width 1.0 of torchvision's AlexNet pools through flax (many channels), 0.125 through slices.
@pytest.mark.parametrize('arch,width', [(a, 0.125) for a in ARCHS] + [
    ('alexnet_torchvision', 1.0)])
def test_smallest_input_size_is_the_models_own(arch, width):
  """Derived from the model by shape computations; checked against the hand computation."""
  hand = next(s for s in range(1, 227) if LAST_MAP[arch](s) >= 1)
  assert validate.min_input_size(arch, width) == hand
  assert validate._accepts(arch, width, hand) and not validate._accepts(arch, width, hand - 1)


def test_library_calls_of_the_wrong_type_name_the_argument(tmp_path):
  config = cimt.get_config('synthetic')
  for call in (medft.train, medft.sweep, medft.auto_tune, medft.pretrain.pretrain):
    with pytest.raises(TypeError, match='config must be an ml_collections.ConfigDict'):
      call(config.to_dict(), tmp_path / 'w')
    with pytest.raises(TypeError, match='workdir must be a folder path'):
      call(config, 5)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('entry', ['train', 'sweep', 'auto_tune', 'pretrain'])
def test_bad_config_touches_no_workdir_data_or_compile_cache(entry, tmp_path):
  config = cimt.get_config('synthetic,pretext,depth=fc8')
  config.data.data_dir = str(tmp_path / 'data')
  config.compile_cache = str(tmp_path / 'jax_cache')
  config.pretrain.steps = 0 if entry == 'pretrain' else 10
  config.train.eval_every = 0 if entry != 'pretrain' else 10
  call = {'train': medft.train, 'sweep': medft.sweep, 'auto_tune': medft.auto_tune,
          'pretrain': medft.pretrain.pretrain}[entry]
  with pytest.raises(errors.ConfigError, match='pretrain.steps=0' if entry == 'pretrain'
                     else 'train.eval_every=0'):
    call(config, tmp_path / 'run')
  assert not list(tmp_path.iterdir())


def test_a_non_config_mode_is_a_bug():
  with pytest.raises(ValueError, match='mode'):
    validate.check_config(ml_collections.ConfigDict(), 'deploy')


def test_set_field_names_a_missing_field_or_a_value_of_the_wrong_type():
  from medft.configs import common
  config = cimt.get_config('synthetic')
  with pytest.raises(errors.ConfigError, match=r"train.steps='abc': expected .* \(int, now"):
    common.set_field(config, 'train.steps', 'abc')
  with pytest.raises(errors.ConfigError, match='has no field train.stpes'):
    common.set_field(config, 'train.stpes', '5')
  common.set_field(config, 'model.width', '0.5')
  assert config.model.width == 0.5
