"""Train a policy on preference data.

accelerate launch scripts/train.py --config recipes/tiny/dpo.yaml [--loss.name=ipo --loss.tau=0.5 ...]
"""

import sys

from alignment.cli import train_main
from alignment.trainers.nodes import exit_status

if __name__ == "__main__":
    sys.exit(exit_status(train_main(sys.argv[1:])))
