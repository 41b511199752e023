import os

import pytest
import torch
from transformers import AutoTokenizer

from tests.helpers import TINY

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores, one thread each (tests/launch.py does the same for the
    # processes they launch): two 2-thread processes on 2 cores run many times slower than
    # one. The tiny model's steps are overhead-bound: one thread trains them at ~0.85x the
    # speed of two.
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    """The tiny recipe's character-level tokenizer, as shipped."""
    return AutoTokenizer.from_pretrained(str(TINY / "tokenizer"))
