"""Per-step time and minor page faults of medft train steps, optionally beside PyTorch's.

  python docs/host_malloc_faults.py ARCH DEPTHS [SIZE] [--torch]
  MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 \
      python docs/host_malloc_faults.py ARCH DEPTHS [SIZE] [--torch]

e.g. `alexnet fc6,scratch 67` (the demo's network) or `alexnet_torchvision scratch,conv2,fc8
227 --torch`. Each arm is the benchmark's real pmapped train step (`medft.bench.cases`,
batch 32); with `--torch` the PyTorch twin is timed interleaved, call by call, in the same
process (so under the same allocator settings). Prints, per arm, the mean step time over 5
calls after warm-up and the process' minor page faults per call (`getrusage`). The figures
and what they mean: docs/throughput.md, section 5.
"""

import resource
import sys
import time

from medft.bench import cases
from medft.bench.core import Settings

CALLS = 5


def faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv):
  args = [a for a in argv if not a.startswith('--')]
  arch, depths = args[0], args[1].split(',')
  s = Settings(input_size=int(args[2]) if len(args) > 2 else 227)
  for depth in depths:
    fns = {'medft': cases.jax_train_case(arch, depth, s).run}
    if '--torch' in argv:  # the twin takes as many threads as JAX has cores
      from medft.bench import torch_twin
      fns['torch'] = torch_twin.torch_train_step(arch, depth, s, s.batch)
    for fn in fns.values():
      fn()
      fn()
    seconds, counts = dict.fromkeys(fns, 0.0), dict.fromkeys(fns, 0)
    for _ in range(CALLS):
      for name, fn in fns.items():
        before, start = faults(), time.perf_counter()
        fn()
        seconds[name] += time.perf_counter() - start
        counts[name] += faults() - before
    print(f'{arch} {depth} {s.input_size}px: ' + ', '.join(
        f'{name} {seconds[name] / CALLS * 1e3:.0f} ms, {counts[name] / CALLS:.0f} faults/step'
        for name in fns), flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
