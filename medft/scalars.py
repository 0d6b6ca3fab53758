"""TensorBoard scalars of a run: the rows of its metrics.jsonl, also as event files.

With `train.tensorboard=True` every numeric field of every metrics.jsonl row is written to
`<workdir>/tensorboard/` (tensorboardX), keyed by the row's step and tagged `val/<name>` for a
field `val_<name>` and `train/<name>` otherwise (`train/loss`, `train/lr`, `val/auc`), so
`tensorboard --logdir=SWEEP` shows every arm's curves side by side (one event folder per run).
Only process 0 writes, as it alone writes metrics.jsonl. TensorBoard keeps scalars as float32.

Resume: the rows logged after the checkpoint a run resumes from are dropped from metrics.jsonl
(`loop.truncate_metrics`). Event files are not rewritten: the resumed run's new event file
starts with a SessionLog START at the resumed step + 1 (what tensorboardX's `purge_step`
writes), and TensorBoard then discards the earlier events from that step on (the same rows),
so the curves hold each step once, as metrics.jsonl does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from medft.errors import MissingPackageError

FOLDER = 'tensorboard'


def require() -> None:
  """MissingPackageError (naming the extra) unless tensorboardX can be imported: checked
  before a run writes anything."""
  try:
    import tensorboardX  # noqa: F401, PLC0415
  except ImportError:
    raise MissingPackageError(
        'train.tensorboard=True needs tensorboardX, an optional extra of medft: pip install '
        '"medft[tensorboard]" (or pip install tensorboardX); or set train.tensorboard=False.'
        ) from None


def tag(field: str) -> str:
  """The TensorBoard tag of a metrics.jsonl field: `val_auc` -> `val/auc`, `loss` ->
  `train/loss`."""
  if field.startswith('val_'):
    return 'val/' + field[len('val_'):]
  return 'train/' + field


def scalars(row: dict) -> Iterator[tuple[str, float]]:
  """(tag, value) of every numeric field of a row but its step; a list of numbers (one per
  packed seed, say) gives `<tag>/<i>`."""
  for field, value in row.items():
    if field == 'step':
      continue
    if _is_number(value):
      yield tag(field), float(value)
    elif isinstance(value, (list, tuple)):
      for i, item in enumerate(value):
        if _is_number(item):
          yield f'{tag(field)}/{i}', float(item)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


class Writer:
  """The event writer of one run folder (`<workdir>/tensorboard/`), from step `resumed` on.

  Events are written synchronously, one record per row, and flushed at once (tensorboardX's
  SummaryWriter queues them for a background thread, which a killed run would lose), so
  the event file holds what metrics.jsonl holds."""

  def __init__(self, workdir: str | Path, resumed: int):
    require()
    from tensorboardX.event_file_writer import EventsWriter  # noqa: PLC0415
    from tensorboardX.proto import event_pb2  # noqa: PLC0415
    self._pb = event_pb2
    folder = Path(workdir) / FOLDER
    existed = folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    self.folder = folder
    # tensorboardX names a file by the second and the host; the suffix keeps a writer opened
    # within the same second (a quick resume) from replacing the last one's file, and sorts
    # after it (TensorBoard reads a folder's files in name order).
    self._writer = EventsWriter(str(folder / 'events'), f'.{time.time_ns()}')
    if existed:  # events after the resumed step may be there: TensorBoard drops them
      self._writer.write_event(self._pb.Event(
          wall_time=time.time(), step=int(resumed) + 1,
          session_log=self._pb.SessionLog(status=self._pb.SessionLog.START)))
    self._writer.flush()

  def write(self, row: dict) -> None:
    """One metrics.jsonl row as one event of all its scalars, flushed at once."""
    from tensorboardX.proto.summary_pb2 import Summary  # noqa: PLC0415
    values = [Summary.Value(tag=name, simple_value=value) for name, value in scalars(row)]
    self._writer.write_event(self._pb.Event(wall_time=time.time(), step=int(row['step']),
                                            summary=Summary(value=values)))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
