"""medft command line from a source checkout (the same as the installed `medft` command).

  python run.py --config=configs/cimt.py:synthetic,depth=scratch,steps=300 --workdir=/tmp/cimt
  python run.py --config=configs/cimt.py:demo --mode=sweep --workdir=demo     # offline demo
  python run.py --config=configs/cimt.py:demo --mode=auto --workdir=demo      # depth on val AUC
  python run.py --mode=report --workdir=demo                                  # re-assemble
  python run.py --config=configs/imagenet_pretrain.py --mode=pretrain --workdir=weights/in1k

The flags and the work are in medft/cli.py.
"""

from medft.cli import run

if __name__ == '__main__':
  run()
