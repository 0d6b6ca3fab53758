"""The one registry convention (medft.registry): lookup by module name, clear unknown names."""

import sys

import pytest

from medft import apps, models
from medft.data import base as data_base
from medft.errors import ConfigError
from medft.registry import Registry
from medft.tasks import TASKS, base


@pytest.mark.parametrize('registry, field, known', [
    (models.ARCHS, 'arch', 'alexnet, alexnet_torchvision, densenet121, resnet18, resnet50, '
                           'resnet50_keras, squeezenet1_1, vit_b16'),
    (TASKS, 'app', 'cimt, frames, pe, polyp'),
    (apps.APPS, 'app', 'cimt, frames, pe, polyp'),
    (data_base.BUILDERS, 'data.name',
     'cad_pe, cubs, cvc_clinicdb, frames_folder, fumpe, kvasir_seg, manifest_cimt, '
     'manifest_classification, manifest_detection, manifest_volumes'),
])
def test_an_unknown_name_names_the_value_and_every_known_one(registry, field, known):
  for bad in ('vgg16', 'augment', 3):  # `augment` is a module of medft.tasks, but no task
    with pytest.raises(ConfigError, match=f'^{field}={bad!r} is not a known .*; choose one of '
                                          f'{known}.$'):
      registry[bad]
    assert bad not in registry


def test_a_lookup_imports_only_the_module_of_its_name(tmp_path, monkeypatch):
  package = tmp_path / 'regdemo'
  package.mkdir()
  (package / '__init__.py').write_text(
      "from medft.registry import Registry\nTHINGS = Registry('thing', 'x', 'regdemo')\n")
  (package / 'a.py').write_text("from regdemo import THINGS\nTHINGS.register('a', 1)\n")
  (package / 'b.py').write_text("from regdemo import THINGS\nTHINGS.register('b', 2)\n"
                                "THINGS.register('b_too', 3)\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  import regdemo
  try:
    assert regdemo.THINGS['a'] == 1
    assert 'regdemo.a' in sys.modules and 'regdemo.b' not in sys.modules
    assert regdemo.THINGS['b_too'] == 3  # not a module's name: every module is imported
    with pytest.raises(ConfigError, match=r"^x='c' is not a known thing; choose one of a, b, "
                                          r"b_too\.$"):
      regdemo.THINGS['c']
  finally:
    for name in ('regdemo', 'regdemo.a', 'regdemo.b'):
      sys.modules.pop(name, None)


def test_a_name_is_registered_once():
  things = Registry('thing', 'x')
  assert things.register('a')(len) is len and things.register('a', len) is len  # same entry
  with pytest.raises(ValueError, match="thing 'a' is registered twice"):
    things.register('a', max)
  assert list(things) == ['a'] and things['a'] is len


def test_every_task_has_the_members_the_trainer_uses():
  members = [m for m in vars(base.Task) if not m.startswith('_')]
  members += list(base.Task.__annotations__)
  assert {'num_classes', 'epoch_examples', 'train_batch', 'eval_patches', 'patch_auc',
          'evaluate'} <= set(members)
  for name in TASKS:
    assert all(hasattr(TASKS[name], m) for m in members), name
    assert TASKS[name].app == name
