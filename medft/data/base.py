"""What every medft builder shares: manual download check, example order, unit metadata.

A builder lists its raw examples once (`_list_records`), sorted by id. The position in that
list is the TFDS key; with `disable_shuffling` TFDS stores examples in key order, so example i
of the prepared data is record i, and the ids and units stored in the dataset's metadata give
the unit of every example without decoding any image. Splits by unit are made at read time
from this metadata (see `medft.data.splits`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from medft.errors import InputFileError, MissingInputError
from medft.registry import Registry

# The only split a medft builder writes: train/validation/test are chosen at read time.
FULL_SPLIT = 'full'


class ManualDirError(MissingInputError):
  """The user's download is missing or incomplete."""


# name -> builder class; a builder module adds its class with `@register_builder`.
BUILDERS: Registry[type['ManualBuilder']] = Registry('dataset', 'data.name', 'medft.data')


def register_builder(cls: type['ManualBuilder']) -> type['ManualBuilder']:
  """Class decorator: the builder under its TFDS name (`cls.name`, also its module's name)."""
  BUILDERS.register(cls.name, cls)
  return cls


class _LocalInfo(tfds.core.DatasetInfo):
  """A medft dataset's info: never on the TFDS bucket, so no look-up there (TFDS's own
  `initialize_from_bucket` leaves an empty temporary folder behind on every new builder)."""

  def initialize_from_bucket(self) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Record:
  """One raw example before loading: its id, its unit (subject/sequence/patient) and files."""

  id: str
  unit: str
  files: dict[str, Any]


def check_manual_dir(
    name: str, manual_dir: str | Path | None, required: Sequence[str], instructions: str,
    prepared_dir: str | Path | None = None,
) -> Path:
  """Returns the manual dir, or raises with the download instructions and the path looked at."""
  if manual_dir is None:
    looked = f' (no prepared copy in {prepared_dir} either)' if prepared_dir else ''
    raise ManualDirError(
        f'Dataset {name!r} needs a manual download but no manual_dir was given{looked}.\n'
        f'{instructions.strip()}\nThen pass manual_dir=<that folder> '
        '(with run.py: --config.data.manual_dir=<that folder>).'
    )
  root = Path(manual_dir).expanduser()
  missing = [sub for sub in required if not (root / sub).exists()]
  if not root.is_dir() or missing:
    what = 'does not exist' if not root.is_dir() else f'lacks {", ".join(missing)}'
    raise ManualDirError(
        f'Dataset {name!r}: looked for the manual download in {root}, which {what}.\n'
        f'{instructions.strip()}'
    )
  return root


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the medft builders (abstract; subclasses set the class attributes)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'First medft release.'}
  # Which application's example dicts this builder produces.
  APP: ClassVar[str] = ''
  # Paths (relative to manual_dir) that must exist before preparation starts.
  REQUIRED: ClassVar[tuple[str, ...]] = ()
  # Features stored as the source file's encoded bytes, decoded at read time: key -> PIL mode.
  ENCODED_IMAGES: ClassVar[dict[str, str]] = {}
  DESCRIPTION: ClassVar[str] = ''
  HOMEPAGE: ClassVar[str] = ''

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    """None: medft builders keep no checksums or metadata files next to their code, and TFDS
    4.9's lookup of that folder needs `importlib_resources`, which it does not install."""
    return None

  @classmethod
  def config_from(cls, data_config: dict[str, Any]) -> tfds.core.BuilderConfig | str | None:
    """The builder config a data config (`medft.data.schema.read`) selects; None: the one."""
    del data_config
    return None

  def _features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _list_records(self, root: Path) -> list[Record]:
    raise NotImplementedError

  def _load_example(self, record: Record) -> dict[str, Any]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return _LocalInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=self._features(),
        homepage=self.HOMEPAGE or None,
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    # `dl_manager.manual_dir` raises a bare AssertionError when the folder is missing; read the
    # configured path instead so that the error can say what is expected there.
    manual_dir = getattr(dl_manager, '_manual_dir', None)
    root = check_manual_dir(self.name, manual_dir, self.REQUIRED, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    records = sorted(self._list_records(root), key=lambda r: r.id)
    if not records:
      raise ManualDirError(
          f'Dataset {self.name!r}: found no examples in {root}.\n'
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}'
      )
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
      dupes = sorted({i for i in ids if ids.count(i) > 1})
      raise InputFileError(f'Dataset {self.name!r}: duplicate example ids {dupes[:5]} in {root}.')
    self.info.metadata.update(
        app=self.APP,
        ids=ids,
        units=[r.unit for r in records],
        source_dir=str(root.resolve()),
        encoded_images=dict(self.ENCODED_IMAGES),
        **self._extra_metadata(records),
    )
    return {FULL_SPLIT: self._generate_examples(records)}

  def _extra_metadata(self, records: list[Record]) -> dict[str, Any]:
    del records
    return {}

  def _generate_examples(self, records: list[Record]) -> Iterator[tuple[int, dict[str, Any]]]:
    for key, record in enumerate(records):
      example = self._load_example(record)
      example['id'] = record.id
      example['unit'] = record.unit
      yield key, example
