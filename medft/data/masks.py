"""Connected components of label masks: polyp boxes and clot ids."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def label_components(mask: np.ndarray) -> np.ndarray:
  """Gives each connected foreground component its own id 1..K (full connectivity), int32."""
  structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
  labels, _ = ndimage.label(np.asarray(mask) > 0, structure=structure)
  return labels.astype(np.int32)


def boxes_from_mask(mask: np.ndarray) -> np.ndarray:
  """Boxes (ymin, xmin, ymax, xmax) in pixels, float32 (K, 4), one per connected component.

  Pixel edges are used (ymax = last row + 1, so a one-pixel blob is 1 x 1); components are
  ordered by their label (raster order of their first pixel).
  """
  labels = label_components(mask)
  boxes = [
      (rows.start, cols.start, rows.stop, cols.stop)
      for rows, cols in ndimage.find_objects(labels)
  ]
  return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
