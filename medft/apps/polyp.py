"""Polyp detection (Tajbakhsh et al. 2016, Sec. V, Fig. 2a, Table S1): FROC in FP/frame.

Operating points: every configured `task.fp_rates` (paper: 0.01 and 0.001 FP/frame); unit of
independence: the video (sequence). The FROC is drawn on the paper's log axis, 1e-4..10.
"""

from medft.apps import APPS, Axis, detection

SPEC = APPS.register('polyp', detection.make(
    'polyp', 'video', 'frame', Axis('log', 1e-4, 10.0, 'false positives per frame')))
