import importlib.util
import os

import pytest
import torch
from transformers import AutoTokenizer

from tests.helpers import TINY


# tests/with_vllm start vLLM engines: they run in the environment that has vLLM (its CPU build
# lives in one of its own; scripts/test_vllm_env.sh builds it), and are not collected elsewhere.
# (The folder is not named vllm: with tests/ on sys.path it would shadow the library,
# and libraries that look for vLLM, as TRL does, would find it.)
def _has_vllm() -> bool:
    try:
        return importlib.util.find_spec("vllm.platforms") is not None
    except ModuleNotFoundError:
        return False


collect_ignore = [] if _has_vllm() else ["with_vllm"]

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
