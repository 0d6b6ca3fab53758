"""Subprocess driver for the multi-process pretraining test.

  python tests/run_pretrain.py WORKDIR PORT PROCESS_ID     (two processes, joined over gloo)

Joins a 2-process `jax.distributed` job on 127.0.0.1:PORT, pretrains the tiny source model of
`tiny.pretext_config()` into WORKDIR, and records in WORKDIR/../writes_<PROCESS_ID>.json the
files this process asked medft's writers (`medft.files`, `store.save_artifact`) to write and
the rows of each global batch it cut (`PretextSource.train_batch`).
"""

import json
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

from medft import files, pretrain  # noqa: E402
from medft.weights import store  # noqa: E402

written = []


def recording(module, name):
  original = getattr(module, name)

  def record(path, *args, **kwargs):
    written.append([name, str(path)])
    return original(path, *args, **kwargs)
  setattr(module, name, record)


for name in ('append_line', 'write_json_atomic', 'write_text_atomic', 'write_marker'):
  recording(files, name)
recording(store, 'save_artifact')
fed = []
cut = pretrain.PretextSource.train_batch


def train_batch(self, step, batch, host_slice=slice(None)):
  fed.append([step, host_slice.start, host_slice.stop])
  return cut(self, step, batch, host_slice)


pretrain.PretextSource.train_batch = train_batch
pretrain.pretrain(tiny.pretext_config(), workdir)
(workdir.parent / f'writes_{process_id}.json').write_text(json.dumps(
    {'written': written, 'fed': sorted(fed)}))
