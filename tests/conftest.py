import pytest
from transformers import AutoTokenizer

from tests.helpers import TINY


@pytest.fixture(scope="module")
def tok():
    """The tiny recipe's character-level tokenizer, as shipped."""
    return AutoTokenizer.from_pretrained(str(TINY / "tokenizer"))
