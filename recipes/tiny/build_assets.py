"""Build the tiny recipe's tokenizer and model config (deterministic; outputs are committed).

    python recipes/tiny/build_assets.py

The tokenizer is character-level over printable ASCII with a small chat template, so
the tiny recipe runs with no network. The model is a 2-layer Llama-architecture
decoder built from `model/config.json` with seeded random weights.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, PreTrainedTokenizerFast

HERE = Path(__file__).parent
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|unk|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + chars)}
    # BPE with no merges over characters: every character is one token, unknown ones map to <|unk|>.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|unk|>"))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        unk_token="<|unk|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def build_model_config(vocab_size: int, pad_token_id: int, eos_token_id: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        attention_dropout=0.0,
    )


def main() -> None:
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(HERE / "tokenizer")
    config = build_model_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    config.save_pretrained(HERE / "model")
    print(json.dumps({"vocab_size": len(tokenizer), "tokenizer": str(HERE / "tokenizer")}))


if __name__ == "__main__":
    main()
