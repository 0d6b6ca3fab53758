"""Pretrained weights: readers for Caffe, PyTorch, safetensors and Keras files, and the
converted-weights artifact (`store`) that `init=` loads."""

from medft.weights.store import Meta, load_artifact, merge_params, save_artifact  # noqa: F401
