"""The configs: one file per application (`<app>.py`, `get_config(arg) -> ConfigDict`), the
source-model pre-training config and the pieces they share (`common`).

A config is loaded by path, as ml_collections loads any config file. In a source checkout the
documented `--config=configs/<app>.py:...` names the top-level `configs/<app>.py`, a two-line
re-export of the file here; after `pip install` (no checkout) `medft --config=<app>:...` names
the file here by its name (`path`). Config files import only from the medft package.
"""

from __future__ import annotations

from pathlib import Path

# The configs shipped with medft, by the name `medft --config=NAME:arg` accepts.
NAMES = ('cimt', 'polyp', 'pe', 'frames', 'imagenet_pretrain')


def path(name: str) -> Path | None:
  """The file of the shipped config `name` (e.g. 'cimt'), or None when there is none."""
  return Path(__file__).with_name(f'{name}.py') if name in NAMES else None
