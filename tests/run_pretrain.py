"""Subprocess driver for the multi-process pretraining test.

  python tests/run_pretrain.py WORKDIR PORT PROCESS_ID     (two processes, joined over gloo)

Joins a 2-process `jax.distributed` job on 127.0.0.1:PORT and pretrains the tiny source model
of `tiny.pretext_config()` into WORKDIR. Process 1 sends itself SIGTERM while it cuts its part
of batch 1: both processes must stop together (`Preempted`) and resume in the same process.
WORKDIR/../writes_<PROCESS_ID>.json records the files this process asked medft's writers
(`medft.files`, `store.save_artifact`) to write, the rows of each global batch it cut
(`PretextSource.train_batch`), and the messages of its `Preempted`.
"""

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

workdir, port, process_id = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
# Before any computation: the CPU client reads it when the backend starts.
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2,
                           process_id=process_id)

import tiny  # noqa: E402

from medft import files, loop, pretrain  # noqa: E402
from medft.weights import store  # noqa: E402

written, fed, preempted = [], [], []


def recording(module, name):
  original = getattr(module, name)

  def record(path, *args, **kwargs):
    written.append([name, str(path)])
    return original(path, *args, **kwargs)
  setattr(module, name, record)


for name in ('append_line', 'write_json_atomic', 'write_text_atomic', 'write_marker'):
  recording(files, name)
recording(store, 'save_artifact')
cut = pretrain.PretextSource.train_batch


def train_batch(self, step, batch, host_slice=slice(None)):
  fed.append([step, host_slice.start, host_slice.stop])
  if process_id == 1 and step == 1 and not preempted:
    os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice to this process only
  return cut(self, step, batch, host_slice)


pretrain.PretextSource.train_batch = train_batch
try:
  pretrain.pretrain(tiny.pretext_config(), workdir)
except loop.Preempted as e:
  preempted.append(str(e))
  pretrain.pretrain(tiny.pretext_config(), workdir)  # the same command again: resumes
(workdir.parent / f'writes_{process_id}.json').write_text(json.dumps(
    {'written': written, 'fed': fed, 'preempted': preempted}))
