"""Packaging: an install holds the medft package only (no top-level `configs` or `third_party`),
with every subpackage, the Caffe licence beside its schema and the `medft` console script; the
shipped configs load by name and by the checkout's documented paths.

Checked on setuptools' own discovery of `[tool.setuptools.packages.find]` (building a wheel
needs `wheel` or setuptools >= 70.1, which the test environment may lack; the manual check
with a real non-editable install is in docs/design_changes.md).
"""

import ast
import importlib
import warnings
from pathlib import Path

import setuptools
from setuptools.config.pyprojecttoml import read_configuration

import medft.configs

ROOT = Path(__file__).resolve().parents[1]
with warnings.catch_warnings():  # older setuptools call [tool.setuptools] 'beta'
  warnings.simplefilter('ignore')
  PYPROJECT = read_configuration(ROOT / 'pyproject.toml', expand=False)


def test_only_the_medft_package_is_installed_and_none_of_it_is_left_out():
  find = PYPROJECT['tool']['setuptools']['packages']['find']
  packages = set(setuptools.find_packages(str(ROOT), include=find['include'],
                                          exclude=find.get('exclude', ())))
  assert {p.split('.')[0] for p in packages} == {'medft'}
  # A folder of modules without __init__.py would be missing from a non-editable install.
  folders = {'.'.join(f.parent.relative_to(ROOT).parts) for f in (ROOT / 'medft').rglob('*.py')
             if '__pycache__' not in f.parts}
  assert folders <= packages, sorted(folders - packages)
  assert {'medft.bench', 'medft.configs', 'medft.third_party.caffe'} <= packages


def test_package_data_and_console_script_exist():
  for package, patterns in PYPROJECT['tool']['setuptools']['package-data'].items():
    folder = ROOT.joinpath(*package.split('.'))
    for pattern in patterns:
      assert list(folder.glob(pattern)), (package, pattern)
  module, _, function = PYPROJECT['project']['scripts']['medft'].partition(':')
  tree = ast.parse(ROOT.joinpath(*module.split('.')).with_suffix('.py').read_text())
  assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
  assert set(PYPROJECT['project']['optional-dependencies']['all']) == {'medft[weights,torch,pe]'}


def test_shipped_configs_load_by_name_and_by_the_checkout_paths():
  from medft import cli
  for name in medft.configs.NAMES:
    path = medft.configs.path(name)
    assert path.is_file() and path.parent == ROOT / 'medft' / 'configs'
    shipped = importlib.import_module(f'medft.configs.{name}')
    assert importlib.import_module(f'configs.{name}').get_config is shipped.get_config
    assert cli._shipped_config(f'--config={name}:demo') == f'--config={path}:demo'
    assert cli._shipped_config(f'--config={name}') == f'--config={path}'
  for arg in ('--config=configs/cimt.py:demo', '--config=common:x', '--config=cimt.py',
              '--workdir=cimt'):
    assert cli._shipped_config(arg) == arg
  assert medft.configs.path('common') is None
