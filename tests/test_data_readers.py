"""Readers of the raw files: CUBS profiles (both layouts), CF files and images."""

import numpy as np
import pytest
from PIL import Image

from medft.data import readers

POINTS = np.array([[10, 50.5], [11, 50.25], [12, 51.0], [13, 52.125]], dtype=np.float32)


def test_both_profile_layouts_parse_to_the_same_polyline(tmp_path):
  rows = tmp_path / 'rows-LI.txt'
  rows.write_text('10 11 12 13\n50.5 50.25 51.0 52.125\n')
  pairs = tmp_path / 'pairs-LI.txt'
  pairs.write_text('10 50.5\n11 50.25\n\n12 51.0\n13 52.125\n')
  commas = tmp_path / 'commas-LI.txt'
  commas.write_text('10,50.5\n11, 50.25\n12,51.0\n13,52.125\n')
  tabs_rows = tmp_path / 'tabs-LI.txt'
  tabs_rows.write_text('10\t11\t12\t13\r\n50.5\t50.25\t51.0\t52.125\r\n')
  for path in (rows, pairs, commas, tabs_rows):
    got = readers.read_profile(path)
    assert got.dtype == np.float32 and got.shape == (4, 2)
    np.testing.assert_array_equal(got, POINTS)


@pytest.mark.parametrize('text', [
    '10 11 12\n50 51\n',             # rows of unequal length
    '10 50 1\n11 51 1\n12 52 1\n',   # three columns
    '10 50\n11 51\n',                # too few points (and ambiguous)
    '10 11 12\n50 51 52\n53 54 55\n',
    '10 50\n11 x\n12 52\n',          # not a number
    '',
])
def test_malformed_profile_names_the_file_and_the_layout(tmp_path, text):
  path = tmp_path / 'clin_0001_L-MA.txt'
  path.write_text(text)
  with pytest.raises(ValueError, match='clin_0001_L-MA.txt') as err:
    readers.read_profile(path)
  assert 'pair per line' in str(err.value) and 'two rows' in str(err.value)


def test_cf_file(tmp_path):
  good = tmp_path / 'a_CF.txt'
  good.write_text('0.0612\n')
  assert readers.read_cf(good) == pytest.approx(0.0612)
  for text in ('', '0.06 0.07', 'abc', '-0.06', '12'):
    bad = tmp_path / 'bad_CF.txt'
    bad.write_text(text)
    with pytest.raises(ValueError, match='bad_CF.txt'):
      readers.read_cf(bad)


def test_corrupt_image_names_the_file(tmp_path):
  path = tmp_path / 'frame.tif'
  path.write_bytes(b'II*\x00 this is not a tiff')
  with pytest.raises(ValueError, match='frame.tif'):
    readers.read_image(path, 'RGB')


def test_image_modes_and_bytes_round_trip(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'x.png')
  np.testing.assert_array_equal(readers.read_image(tmp_path / 'x.png', 'RGB'), rgb)
  assert readers.read_image(tmp_path / 'x.png', 'L').shape == (5, 7)
  data = readers.read_image_bytes(tmp_path / 'x.png', 'RGB')
  np.testing.assert_array_equal(readers.decode_image_bytes(data, 'RGB'), rgb)
