"""Application configs: the paper's training-size designs and test shares; a study checks every
planned fraction on the data before its first run, and a run records what its fraction kept."""

import json

import numpy as np
import pytest
import tiny

from configs import cimt, frames, pe, polyp
from medft import errors, sweep, validate
from medft.data import schema
from medft.sweep import run_dir


@pytest.mark.parametrize('module, unit, fractions, train_units', [
    (cimt, 'subjects', '0.25,0.5,1.0', '1'),  # down to a single patient
    (polyp, 'frames', '0.25,0.5,1.0', ''),    # Kvasir-SEG: no video ids, a frame is a unit
    (pe, 'patients', '0.25,0.5,1.0', ''),     # the paper's 50/25%, 100% as the reference
    (frames, 'frames', '0.01,0.05,0.1,1.0', ''),
])
def test_each_app_states_the_papers_design(module, unit, fractions, train_units):
  c = module.get_config()
  assert (c.data.fraction_unit, c.sweep.fractions, c.sweep.train_units) == (
      unit, fractions, train_units)
  assert c.data.test_share == 0.5 and c.data.val_share == 0.2


@pytest.mark.parametrize('module', [cimt, polyp, pe, frames])
def test_the_data_block_is_the_loaders_schema(module):
  c = module.get_config('synthetic')
  assert set(c.data) == set(schema.FIELDS)  # so every field can be set on the command line
  assert all(f'data.{key}' in validate.RULES for key in schema.FIELDS)
  read = schema.read(c.data)
  assert read['annotator'] == 'A1' and read['synthetic_seed'] == 0
  validate.check_config(c)


def test_design_variants():
  assert polyp.get_config('synthetic').data.fraction_unit == 'videos'  # CVC-ClinicDB layout
  demo = cimt.get_config('demo')
  assert (demo.sweep.fractions, demo.sweep.train_units) == ('0.5,1.0', '')
  # Giving fractions (or unit counts) replaces the whole design.
  own = cimt.get_config('fractions=0.5+1.0')
  assert (own.sweep.fractions, own.sweep.train_units) == ('0.5+1.0', '')
  assert cimt.get_config('train_units=2').sweep.train_units == '2'


def _study(data_dir, fractions, train_units):
  c = tiny.config(data_dir, steps=2)
  c.task.eval_col_stride = 24
  c.sweep.arms, c.sweep.fractions, c.sweep.train_units = 'scratch', fractions, train_units
  c.sweep.report = False
  return c


def test_a_too_small_fraction_is_refused_before_the_first_run(cimt_data_dir, tmp_path):
  study = tmp_path / 'study'
  with pytest.raises(errors.ConfigError,
                     match=r'5 training subjects.*fraction=0.05 .*only 5 units \(subjects\)'):
    sweep(_study(cimt_data_dir, '0.05,1.0', ''), study)
  assert not study.exists()  # no plan, no source model, no run folder written
  with pytest.raises(errors.ConfigError, match='has 5 subjects; ask for 1 to 5'):
    sweep(_study(cimt_data_dir, '1.0', '9'), study)
  assert not study.exists()


def test_single_patient_arm_runs_and_results_record_unit_and_count(cimt_data_dir, tmp_path):
  study = tmp_path / 'study'
  sweep(_study(cimt_data_dir, '1.0', '1'), study)
  assert json.loads((study / 'sweep.json').read_text())['fractions'] == [0.2, 1.0]
  for fraction, kept in ((0.2, 1), (1.0, 5)):  # 1 of the 5 training subjects, then all
    results = json.loads((run_dir(study, 'scratch', fraction, 0) / 'results.json').read_text())
    assert (results['fraction'], results['fraction_unit'], results['train_units']) == (
        fraction, 'subjects', kept)
    test = results['test']
    shares = [p['roi_edge_share'] for p in test['per_image']]
    assert all(0 <= s <= 1 for s in shares) and len(shares) == 12  # 6 test subjects x 2 sides
    assert test['roi_edge_share'] == pytest.approx(np.mean(shares))
    assert (test['roi_source'], test['roi_height_mm']) == ('box', 2.0)  # tests/tiny.py's box
