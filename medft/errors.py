"""The errors medft raises for bad input: a `UserError` is the user's to fix, anything else a bug.

`run.py` prints a `UserError` as one paragraph (its message names the file, key or value and
the fix) and exits 1; every other exception keeps its traceback. Library code raises the
subclass that fits; each also derives from the builtin a caller would expect (`ValueError`,
`FileNotFoundError`, ...), so `except ValueError` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
  """Bad input the user can fix: the message says which file, key or value, and what to do."""


class ConfigError(UserError, ValueError):
  """A config value outside its valid range or set (checked before anything is written)."""


class InputFileError(UserError, ValueError):
  """A damaged, torn or wrongly shaped input file (weights, annotations, prepared data, JSON)."""


class MissingInputError(UserError, FileNotFoundError):
  """A file or folder the user named does not exist or is incomplete."""


class NotOursError(UserError, FileExistsError):
  """medft refuses to overwrite or delete a folder or file it did not write."""


class LockedError(UserError, RuntimeError):
  """Another live process holds the workdir, sweep or source-model lock."""


class MissingPackageError(UserError, ImportError):
  """An optional package a step needs is not installed: names the package and the pip extra."""


class ResourceError(UserError, OSError):
  """The disk is full or a folder is read-only: names the folder and what the step needs."""


class NonFiniteError(UserError, RuntimeError):
  """A non-finite loss or update stopped the run (lower the learning rate or check the data)."""
