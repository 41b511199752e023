"""Generate the tiny recipe's preference data (deterministic; the outputs are committed).

    python recipes/tiny/make_data.py

The task, its generator and its judge are in `alignment.tasks.arithmetic`; VPL's
two-user task is `alignment.tasks.two_users`."""

from pathlib import Path

from alignment.tasks import two_users
from alignment.tasks.arithmetic import write_data

if __name__ == "__main__":
    write_data(Path(__file__).parent / "data")
    two_users.write_data(Path(__file__).parent / "data")  # VPL's two-user task
    for user in two_users.USERS:
        two_users.user_context(Path(__file__).parent / "data", user)
