"""The vLLM server engine's weight packing and checksums (no vLLM needed): tensors of
mixed dtypes and odd sizes survive `pack` / `unpack` bit for bit, in the chunks both
sides compute alike."""

from __future__ import annotations

import pytest
import torch

from alignment.online.engines.vllm_server import (
    checksum,
    checksums_match,
    chunk_layout,
    pack,
    packed_size,
    parse_dtype,
    unpack,
)


def test_chunk_layout_groups_consecutive_tensors_up_to_the_limit():
    assert chunk_layout([5, 5, 20, 0, 3], limit=10) == [[0, 1], [2], [3, 4]]
    assert chunk_layout([], limit=10) == []
    assert chunk_layout([0, 0], limit=10) == [[0, 1]]


def test_pack_unpack_round_trip_of_mixed_dtypes_and_odd_sizes():
    torch.manual_seed(0)
    tensors = [
        torch.randn(3).bfloat16(),  # 6 bytes: the next tensor would start misaligned unpadded
        torch.randn(2, 3),
        torch.tensor(7, dtype=torch.int64),
        torch.zeros(0),
        torch.tensor([True, False, True]),
        torch.randn(5, 2).half().t(),  # not contiguous
    ]
    specs = [(t.dtype, list(t.shape)) for t in tensors]
    buffer = pack(tensors)
    assert buffer.dtype == torch.uint8
    assert buffer.numel() == sum(packed_size(t.numel() * t.element_size()) for t in tensors)
    for sent, received in zip(tensors, unpack(buffer.clone(), specs), strict=True):
        assert received.dtype == sent.dtype and received.shape == sent.shape
        assert torch.equal(received, sent)


def test_checksums_match_within_the_scale_of_the_magnitudes():
    x = torch.randn(1000, dtype=torch.float64)
    x -= x.mean()  # a sum near zero: compared relative to the sum of magnitudes
    assert checksums_match(checksum(x), checksum(x.flip(0)))
    assert not checksums_match(checksum(x), checksum(torch.zeros_like(x)))
    assert not checksums_match(checksum(x), checksum(x * 1.001))


def test_parse_dtype():
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype("torch.float32") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("Tensor")
