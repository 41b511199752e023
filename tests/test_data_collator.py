"""PreferenceCollator: shapes, padding and masks with uneven list sizes and lengths."""

from __future__ import annotations

import pytest
import torch

from alignment.data import PreferenceCollator

PAD = 0


def rows():
    return [
        {"prompt_input_ids": [5, 6, 7], "completion_input_ids": [[10, 11], [12]], "scores": [1.0, 0.0]},
        {
            "prompt_input_ids": [8],
            "completion_input_ids": [[20, 21, 22, 23], [24, 25], [26]],
            "scores": [0.5, 2.0, 0.5],
        },
    ]


def test_shapes_padding_and_masks():
    batch = PreferenceCollator(PAD)(rows())
    assert batch["prompt_input_ids"].tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["completion_input_ids"].shape == (2, 3, 4)
    assert batch["completion_input_ids"].tolist() == [
        [[10, 11, PAD, PAD], [12, PAD, PAD, PAD], [PAD, PAD, PAD, PAD]],
        [[20, 21, 22, 23], [24, 25, PAD, PAD], [26, PAD, PAD, PAD]],
    ]
    assert batch["completion_attention_mask"].tolist() == [
        [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]],
        [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]],
    ]
    assert batch["scores"].tolist() == [[1.0, 0.0, 0.0], [0.5, 2.0, 0.5]]
    assert batch["mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["lengths"].tolist() == [[2, 1, 0], [4, 2, 1]]


def test_dtypes():
    batch = PreferenceCollator(PAD)(rows())
    assert batch["scores"].dtype == torch.float32
    assert batch["mask"].dtype == torch.bool
    for key in (
        "prompt_input_ids",
        "prompt_attention_mask",
        "completion_input_ids",
        "completion_attention_mask",
        "lengths",
    ):
        assert batch[key].dtype == torch.long, key


def test_nonzero_pad_id():
    batch = PreferenceCollator(99)(rows())
    assert batch["prompt_input_ids"][1].tolist() == [8, 99, 99]
    assert batch["completion_input_ids"][0, 2].tolist() == [99] * 4


def test_per_item_extra_keys_pass_through_and_others_are_ignored():
    batch_rows = rows()
    batch_rows[0].update(reference_logps=[-1.5, -2.0], note="text", tokens_dropped=3)
    batch_rows[1].update(reference_logps=[-1.0, -3.0, -4.0], note="more", tokens_dropped=0)
    batch = PreferenceCollator(PAD)(batch_rows)
    assert batch["reference_logps"].dtype == torch.float32
    assert batch["reference_logps"].tolist() == [[-1.5, -2.0, 0.0], [-1.0, -3.0, -4.0]]
    assert "note" not in batch and "tokens_dropped" not in batch


def test_malformed_per_item_key_fails():
    batch_rows = rows()
    batch_rows[0]["reference_logps"] = [-1.5, -2.0]
    batch_rows[1]["reference_logps"] = [-1.0]
    with pytest.raises(ValueError, match="reference_logps"):
        PreferenceCollator(PAD)(batch_rows)


def test_tensor_rows_from_a_torch_formatted_dataset():
    tensor_rows = [
        {
            "prompt_input_ids": torch.tensor(r["prompt_input_ids"]),
            "completion_input_ids": [torch.tensor(c) for c in r["completion_input_ids"]],
            "scores": torch.tensor(r["scores"], dtype=torch.float64),
        }
        for r in rows()
    ]
    expected = PreferenceCollator(PAD)(rows())
    got = PreferenceCollator(PAD)(tensor_rows)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
