"""One registry convention for every layer: name -> object, added where the object is defined.

Architectures (`medft.models.ARCHS`), dataset builders (`medft.data.base.BUILDERS`), tasks
(`medft.tasks.TASKS`), polyp candidate generators (`medft.tasks.polyp.GENERATORS`) and the
applications' report declarations (`medft.apps.APPS`) are each a `Registry`, filled by its
decorator in the module that defines the entry:

    @TASKS.register('polyp')
    class PolypTask(detection.CandidateTask): ...

A registry of a package finds its entries by module name, as big_vision does: looking up
'polyp' imports `<package>.polyp` first, and only a name found nowhere imports every module of
the package. So a fifth application, or a new network, is one new module per layer (plus its
config) and no list to edit. An unknown name is a ConfigError that names the value and every
known name.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import Any, Callable, Generic, Iterator, TypeVar

from medft.errors import ConfigError

T = TypeVar('T')


class Registry(Generic[T]):
  """Named entries of one kind; `field` is how a config or file names the choice (errors)."""

  def __init__(self, kind: str, field: str, package: str | None = None):
    self.kind, self.field, self.package = kind, field, package
    self._entries: dict[str, T] = {}
    self._all_loaded = package is None

  def register(self, name: str, value: Any = None) -> Callable[[T], T] | T:
    """`@registry.register(name)` on a definition, or `registry.register(name, value)`."""
    def add(entry: T) -> T:
      held = self._entries.get(name)
      if held is not None and held is not entry:
        raise ValueError(f'{self.kind} {name!r} is registered twice ({held!r} and {entry!r}).')
      self._entries[name] = entry
      return entry
    return add if value is None else add(value)

  def _load(self, name: str | None = None) -> None:
    """Imports `<package>.<name>` (when it exists), or with no name every module of it."""
    if self._all_loaded:
      return
    if name is not None:
      module = f'{self.package}.{name}'
      if name.isidentifier() and importlib.util.find_spec(module) is not None:
        importlib.import_module(module)
      return
    package = importlib.import_module(self.package)
    for info in pkgutil.iter_modules(package.__path__):
      importlib.import_module(f'{self.package}.{info.name}')
    self._all_loaded = True

  def _find(self, name: Any) -> bool:
    if not isinstance(name, str):
      return False
    if name not in self._entries:
      self._load(name)  # big_vision's convention: the entry lives in the module of its name
    if name not in self._entries:
      self._load()  # e.g. alexnet_torchvision, defined beside alexnet
    return name in self._entries

  def get(self, name: Any) -> T:
    """The entry `name`; a ConfigError naming the value and the known names otherwise."""
    if not self._find(name):
      raise ConfigError(f'{self.field}={name!r} is not a known {self.kind}; choose one of '
                        f'{", ".join(self.names())}.')
    return self._entries[name]

  def names(self) -> list[str]:
    """Every registered name, sorted."""
    self._load()
    return sorted(self._entries)

  __getitem__ = get
  __contains__ = _find

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self.names())
