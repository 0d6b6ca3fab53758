"""Subprocess driver for multi-device, multi-process and resume tests.

  python tests/run_train.py WORKDIR DATA_DIR STEPS [key=value ...]

Trains the tiny CIMT config (tests/tiny.py) and, on process 0, dumps the final (latest)
parameters to WORKDIR/final_params.npz for bit-level comparison.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import medft.parallel  # noqa: E402

medft.parallel.initialize_distributed()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tiny  # noqa: E402
from flax import traverse_util  # noqa: E402

import medft  # noqa: E402
from medft.configs import common  # noqa: E402


def main(workdir, data_dir, steps, *overrides):
  config = tiny.config(data_dir, steps=int(steps))
  for item in overrides:
    key, value = item.split('=', 1)
    common.set_field(config, key, value)
  medft.train(config, workdir)
  import orbax.checkpoint as ocp  # every process joins the restore: orbax syncs them
  mngr = ocp.CheckpointManager(Path(workdir, 'checkpoints', 'latest').absolute())
  tree = mngr.restore(mngr.latest_step())
  mngr.close()
  if jax.process_index() == 0:
    flat = traverse_util.flatten_dict(tree['state']['params'], sep='/')
    np.savez(Path(workdir, 'final_params.npz'), **{k: np.asarray(v) for k, v in flat.items()})


if __name__ == '__main__':
  main(*sys.argv[1:])
