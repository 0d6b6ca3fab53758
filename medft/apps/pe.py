"""Pulmonary embolism detection (Tajbakhsh et al. 2016, Sec. VI, Fig. 4, Table S2).

Operating points: each configured `task.fp_rates` (paper: 1, 2, 3, 4, 5 FP/volume); unit of
independence: the patient (a per_unit record holds all of one patient's CT volumes, as
medft.tasks.pe writes it). The FROC is drawn as in Fig. 4, 0..10 FP/volume.
"""

from medft.apps import APPS, Axis, detection

SPEC = APPS.register('pe', detection.make(
    'pe', 'patient', 'volume', Axis('linear', 0.0, 10.0, 'false positives per volume')))
