"""Datasets of the four applications as TFDS builders, read without TensorFlow.

    from medft import data
    ds = data.load({'name': 'synthetic_cimt', 'fraction': 0.5, 'split_seed': 0})
    ds.app, len(ds.splits['train']), ds.splits['train'][0]['image'].shape, ds.units('test')

Builders: cubs (CIMT), cvc_clinicdb and kvasir_seg (polyps), cad_pe and fumpe (PE),
frames_folder (frame classification); `synthetic_<app>` or `synthetic_<builder>` reads a
synthetic twin through the same builder. See `medft.data.dataset` for splits and fractions.
"""

from medft.data.base import ManualDirError
from medft.data.dataset import (
    BUILDERS,
    Dataset,
    SplitView,
    dataset_names,
    default_data_dir,
    load,
    prepare,
    study_fractions,
)

__all__ = [
    'BUILDERS',
    'Dataset',
    'ManualDirError',
    'SplitView',
    'dataset_names',
    'default_data_dir',
    'load',
    'prepare',
    'study_fractions',
]
