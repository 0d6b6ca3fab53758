"""Readers for the small files of the raw datasets: images, CUBS profiles and CF files.

Every reader names the file at fault in its error, so a broken download can be fixed by hand.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medft.errors import InputFileError

_SEPARATORS = re.compile(r'[\s,;]+')
_PROFILE_LAYOUTS = (
    'two rows (all x values on the first line, all y values on the second) or one "x y" '
    'pair per line, values separated by whitespace or commas, at least 3 points'
)


# PIL modes of 16-bit greyscale images ('I' is how some Pillow versions open 16-bit PNGs).
_SIXTEEN_BIT = ('I;16', 'I;16B', 'I;16L', 'I')
_SIXTEEN_BIT_TOP = 65535.0


def read_image(path: Path, mode: str) -> np.ndarray:
  """Decodes an image file to uint8: mode 'L' gives (H, W), 'RGB' gives (H, W, 3).

  16-bit greyscale is scaled by the dtype's range (value * 255 / 65535), the same for every
  image, so intensities stay comparable across images (scaling each image by its own maximum
  would not); PIL's own conversion would clip instead.
  """
  try:
    with Image.open(path) as img:
      img.load()
      return _to_uint8(img, mode, path)
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
    raise InputFileError(f'Cannot read image {path}: {err}. Re-download or replace this '
                         'file.') from err


def _to_uint8(img: Image.Image, mode: str, source: Path | str) -> np.ndarray:
  if img.mode not in _SIXTEEN_BIT:
    return np.asarray(img.convert(mode), dtype=np.uint8).copy()
  values = np.asarray(img, dtype=np.float64)
  if values.size and (values.min() < 0 or values.max() > _SIXTEEN_BIT_TOP):
    raise InputFileError(f'Image {source} holds values {values.min():g}..{values.max():g}, '
                         'outside the 16-bit range 0..65535 medft reads; save it as 8- or '
                         '16-bit greyscale.')
  grey = np.round(values * (255.0 / _SIXTEEN_BIT_TOP)).astype(np.uint8)
  return grey if mode == 'L' else np.repeat(grey[..., None], 3, axis=-1)


def read_image_bytes(path: Path, mode: str) -> bytes:
  """Returns the file's bytes after checking that they decode (so a corrupt file fails now)."""
  read_image(path, mode)
  return Path(path).read_bytes()


def decode_image_bytes(data: np.ndarray | bytes, mode: str) -> np.ndarray:
  """Decodes image file bytes (as stored by the builders) to a uint8 array."""
  raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
  with Image.open(io.BytesIO(raw)) as img:
    return _to_uint8(img, mode, '<stored image bytes>')


def _numbers(path: Path, line_no: int, line: str) -> list[float]:
  tokens = [t for t in _SEPARATORS.split(line.strip()) if t]
  try:
    return [float(t) for t in tokens]
  except ValueError as err:
    raise InputFileError(
        f'{path}:{line_no}: non-numeric value in {line.strip()!r}; expected {_PROFILE_LAYOUTS}.'
    ) from err


def parse_profile(text: str, path: Path | str = '<string>') -> np.ndarray:
  """Parses a CUBS LI/MA profile into float32 (N, 2) with columns (x, y) in pixels.

  Two layouts are accepted (both occur in copies of CUBS): two rows (x row, y row), or one
  "x y" pair per line. Points keep the order of the file.
  """
  lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
  rows = [_numbers(Path(path), i, ln) for i, ln in lines]
  counts = [len(r) for r in rows]
  if len(rows) == 2 and counts[0] == counts[1] and counts[0] >= 3:
    points = np.stack([rows[0], rows[1]], axis=1)
  elif len(rows) >= 3 and all(c == 2 for c in counts):
    points = np.asarray(rows)
  else:
    shown = counts if len(counts) <= 8 else counts[:8] + ['...']
    raise InputFileError(
        f'Malformed profile {path}: {len(rows)} non-empty lines with {shown} values per line; '
        f'expected {_PROFILE_LAYOUTS}.'
    )
  if not np.all(np.isfinite(points)):
    raise InputFileError(f'Malformed profile {path}: contains NaN or infinite values.')
  return points.astype(np.float32)


def read_profile(path: Path) -> np.ndarray:
  """Reads a CUBS profile file; see `parse_profile`."""
  try:
    text = Path(path).read_text()
  except (OSError, UnicodeDecodeError) as err:
    raise InputFileError(f'Cannot read profile {path}: {err}') from err
  return parse_profile(text, path)


def read_cf(path: Path) -> float:
  """Reads a CUBS calibration factor file: one positive number, millimetres per pixel."""
  try:
    text = Path(path).read_text()
  except (OSError, UnicodeDecodeError) as err:
    raise InputFileError(f'Cannot read calibration file {path}: {err}') from err
  tokens = [t for t in _SEPARATORS.split(text.strip()) if t]
  try:
    if len(tokens) != 1:
      raise ValueError(f'{len(tokens)} values')
    value = float(tokens[0])
  except ValueError as err:
    raise InputFileError(
        f'Malformed calibration file {path}: expected exactly one number (mm per pixel), '
        f'got {text.strip()[:80]!r}.'
    ) from err
  if not (np.isfinite(value) and 0.0 < value <= 1.0):
    raise InputFileError(
        f'Malformed calibration file {path}: {value} mm/pixel is outside (0, 1]; CUBS '
        'calibration factors are about 0.03-0.10.'
    )
  return value
