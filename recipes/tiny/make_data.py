"""Generate the tiny recipe's preference data (deterministic; the outputs are committed).

    python recipes/tiny/make_data.py

The task, its generator and its judge are in `alignment.tasks.arithmetic`."""

from pathlib import Path

from alignment.tasks.arithmetic import write_data

if __name__ == "__main__":
    write_data(Path(__file__).parent / "data")
