"""train.tensorboard=True: a run's metrics.jsonl rows as TensorBoard scalars (medft/scalars.py).

The event files are read back here with a minimal reader of their record format (length,
masked CRC, Event proto, masked CRC; tensorboardX's own protos and CRC), since the
`tensorboard` package itself is not a test dependency.
"""

import json
import struct
import sys

import numpy as np
import pytest
import tiny

import medft
from medft import loop, scalars
from medft.errors import MissingPackageError


def read_events(folder):
  """Every Event of the event files in `folder`, file by file in the order they were written
  (their names start with the creation time), each record's CRCs checked."""
  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto import event_pb2

  def masked(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff

  events = []
  for path in sorted(folder.glob('events.out.tfevents.*')):
    data, i = path.read_bytes(), 0
    while i < len(data):
      header = data[i:i + 8]
      (length,), (header_crc,) = struct.unpack('<Q', header), struct.unpack('<I',
                                                                             data[i + 8:i + 12])
      record = data[i + 12:i + 12 + length]
      (record_crc,) = struct.unpack('<I', data[i + 12 + length:i + 16 + length])
      assert masked(header) == header_crc and masked(record) == record_crc, path
      events.append(event_pb2.Event.FromString(record))
      i += 16 + length
  return events


def scalar_values(events):
  """{(tag, step): value} as TensorBoard shows them: a SessionLog START at step s (what
  `purge_step` writes) drops the events at step >= s written before it."""
  from tensorboardX.proto.event_pb2 import SessionLog
  out = {}
  for event in events:
    if event.HasField('session_log') and event.session_log.status == SessionLog.START:
      out = {k: v for k, v in out.items() if k[1] < event.step}
    for value in event.summary.value:
      out[(value.tag, event.step)] = value.simple_value
  return out


def expected(rows):
  """metrics.jsonl rows as TensorBoard keeps them (float32)."""
  return {(tag, row['step']): np.float32(value) for row in rows
          for tag, value in scalars.scalars(row)}


def test_run_writes_every_metrics_row_as_scalars_also_after_a_kill(cimt_data_dir, tmp_path,
                                                                    monkeypatch):
  config = tiny.config(cimt_data_dir, steps=10)
  config.data.test_share = 0.0  # no test split: this test is about the training curves
  config.train.tensorboard, config.train.log_every = True, 2  # rows 2, 4, ..., 10
  # The process dies after step 7: rows up to 6 are written, the latest checkpoint is step 5.
  after_step = loop.Loop.after_step

  def dies_after_step_7(self, step, *args, **kwargs):
    out = after_step(self, step, *args, **kwargs)
    if step == 7:
      raise KeyboardInterrupt('killed')
    return out
  monkeypatch.setattr(loop.Loop, 'after_step', dies_after_step_7)
  with pytest.raises(KeyboardInterrupt):
    medft.train(config, tmp_path / 'run')
  monkeypatch.undo()
  events = tmp_path / 'run' / scalars.FOLDER
  assert ('train/loss', 6) in scalar_values(read_events(events))
  medft.train(config, tmp_path / 'run')  # resumes at step 5: metrics.jsonl drops row 6

  rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text()
          .splitlines()]
  assert [r['step'] for r in rows] == [2, 4, 6, 8, 10] and 'val_auc' in rows[-1]
  assert len(list(events.iterdir())) == 2  # one event file per process that wrote rows
  got = scalar_values(read_events(events))
  want = expected(rows)
  assert {'train/loss', 'train/accuracy', 'train/lr', 'train/img_per_s', 'val/auc'} <= {
      tag for tag, _ in want}
  assert got == want  # the old row 6 purged: each step once, as in metrics.jsonl


def test_resumed_writer_purges_the_rows_metrics_jsonl_dropped(tmp_path):
  rows = [{'step': s, 'loss': 1.0 / s, 'val_auc': 0.5 + s / 100} for s in (5, 10, 15)]
  first = scalars.Writer(tmp_path, resumed=0)
  for row in rows:
    first.write(row)
  first.close()
  # Resumed from a checkpoint at step 10: metrics.jsonl keeps rows 5 and 10, step 15 again.
  again = {'step': 15, 'loss': 0.25, 'val_auc': 0.9, 'packed': [1.5, 2.5], 'note': 'x'}
  second = scalars.Writer(tmp_path, resumed=10)
  second.write(again)
  second.close()
  got = scalar_values(read_events(tmp_path / scalars.FOLDER))
  assert got == expected(rows[:2] + [again])
  assert got[('train/packed/1', 15)] == 2.5 and ('train/note', 15) not in got


def test_missing_tensorboardx_is_named_before_anything_is_written(cimt_data_dir, tmp_path,
                                                                  monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorboardX', None)  # import fails as if not installed
  config = tiny.config(cimt_data_dir, steps=10)
  config.train.tensorboard = True
  with pytest.raises(MissingPackageError, match=r'medft\[tensorboard\]'):
    medft.train(config, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_tags():
  assert [scalars.tag(f) for f in ('val_auc', 'loss', 'lr')] == ['val/auc', 'train/loss',
                                                                  'train/lr']
