"""Every forward strategy gives the baseline's per-completion log-probs and gradients
(to a few float32 units), for pairs and for K = 4 lists of uneven lengths, under SDPA and eager
attention, with and without LoRA; the chunked LM head never holds the batch's logits."""

from __future__ import annotations

import pytest
import torch

from alignment.config import LoraConfig
from alignment.logprobs import STRATEGIES, _output_head, policy_forward, resolve_strategy, sequence_logps
from alignment.models import load_policy
from tests.helpers import assert_float32_close, collate, tiny_model_config, tiny_rows, tokenized

OTHERS = [s for s in STRATEGIES if s != "baseline"]


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    pairs = tokenized(tiny_rows("pairs", n=6), tmp_path_factory.mktemp("pairs"))
    lists = tiny_rows("lists", n=5)
    # Uneven lists: long and short answers, and K = 4, 3 and 2 in one batch.
    lists[0]["completions"] = ["7", "123456", "12", "9999"]
    lists[0]["prompt"] = "1+2+3+4+5="
    lists[1]["completions"], lists[1]["scores"] = lists[1]["completions"][:3], lists[1]["scores"][:3]
    lists[2]["completions"], lists[2]["scores"] = ["3", "44"], [6.0, 1.0]
    listwise = tokenized(lists, tmp_path_factory.mktemp("lists"), bad_rows="skip")
    return {"pairs": collate(pairs), "lists": collate(listwise)}


def model_with(attn: str, lora: bool = False):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    cfg.attn_implementation = attn
    model = load_policy(cfg, lora=LoraConfig(r=4, alpha=8, dropout=0.0) if lora else None)
    if lora:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    return model.train()


def logps_and_grads(model, batch, strategy, chunk_size=1024):
    model.zero_grad()
    logps = sequence_logps(model, batch, strategy, chunk_size=chunk_size)
    weights = torch.linspace(-1.0, 2.0, logps.numel()).reshape(logps.shape)  # any fixed direction
    (weights * logps).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), grads


def assert_grads_close(grads, base_grads, ulps: float) -> None:
    for name, g in grads.items():
        try:
            assert_float32_close(g, base_grads[name], ulps=ulps)
        except AssertionError as error:
            raise AssertionError(f"the gradient of {name}") from error


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["pairs", "lists"])
@pytest.mark.parametrize("strategy", OTHERS)
def test_strategy_matches_baseline(batches, attn, kind, strategy):
    batch = batches[kind]
    if kind == "lists":
        assert {2, 3, 4} <= set(batch["mask"].sum(-1).tolist())
    model = model_with(attn)
    base_logps, base_grads = logps_and_grads(model, batch, "baseline")
    logps, grads = logps_and_grads(model, batch, strategy, chunk_size=5)  # several chunks
    # (1 unit: no looser than the former 1e-5 on summed log-probs of up to about 32)
    assert_float32_close(logps, base_logps, ulps=1)
    assert (logps[~batch["mask"]] == 0).all()
    assert grads.keys() == base_grads.keys()
    # each gradient sums over every token of the batch, in another order than the baseline's
    assert_grads_close(grads, base_grads, ulps=16)


@pytest.mark.parametrize("strategy", OTHERS)
def test_strategy_matches_baseline_with_lora(batches, strategy):
    model = model_with("sdpa", lora=True)
    base_logps, base_grads = logps_and_grads(model, batches["lists"], "baseline")
    logps, grads = logps_and_grads(model, batches["lists"], strategy)
    assert_float32_close(logps, base_logps, ulps=1)
    assert grads.keys() == base_grads.keys() and all("lora_" in n for n in grads)
    # as above, and through both factors B A of each adapter
    assert_grads_close(grads, base_grads, ulps=32)


@pytest.mark.parametrize("kind", ["pairs", "lists"])
@pytest.mark.parametrize("strategy", OTHERS)
def test_wpo_weights_match_the_baseline_and_carry_no_gradient(batches, kind, strategy):
    """sum_t log p(y_t) - log sum_v p(v)^2 per completion, the same under every strategy,
    and by hand from the baseline's full logits."""
    from alignment.logprobs import concatenated_rows

    batch = batches[kind]
    model = model_with("sdpa")
    base = policy_forward(model, batch, "baseline", wpo=True)
    ours = policy_forward(model, batch, strategy, chunk_size=5, wpo=True)
    base_logps, base_aligned, logps, aligned = base.logps, base.wpo_sums, ours.logps, ours.wpo_sums
    assert_float32_close(logps, base_logps, ulps=1)
    # each token's term is the difference of two values near log(vocab) = 4.6, whose float32
    # rounding (~5e-7 each) does not shrink with the small difference: an absolute bound
    torch.testing.assert_close(aligned, base_aligned, rtol=0, atol=4e-6)
    assert not aligned.requires_grad and logps.requires_grad
    assert (aligned[~batch["mask"]] == 0).all()
    input_ids, attention_mask, in_completion, index = concatenated_rows(batch)
    with torch.no_grad():
        probs = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float().softmax(-1)
        p_next = probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        by_hand = ((p_next.log() - probs.pow(2).sum(-1).log()) * in_completion[:, 1:]).sum(-1)
    torch.testing.assert_close(aligned[index[:, 0], index[:, 1]], by_hand, rtol=1e-5, atol=1e-5)


def test_chunked_head_never_saves_the_batch_logits(batches):
    """Logit-shaped tensors ([..., vocab]) that autograd keeps for backward: with chunks
    of 4 tokens none holds more than 4 rows; the baseline keeps every row's logits."""
    batch = batches["lists"]
    tokens = int(batch["completion_attention_mask"].sum())
    model = model_with("sdpa")
    vocab = model.config.vocab_size

    def largest_saved_logits(strategy: str, chunk_size: int | None) -> int:
        sizes = [0]

        def pack(t):
            # (the LM head's own weight, saved as [hidden, vocab], is not activation memory)
            if t.dim() >= 2 and t.shape[-1] == vocab and t.numel() != model.lm_head.weight.numel():
                sizes.append(t.numel() // vocab)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sequence_logps(model, batch, strategy, chunk_size=chunk_size).sum()
        return max(sizes)

    assert largest_saved_logits("baseline", None) >= tokens  # every row's logits, prompts included
    for strategy in OTHERS:
        assert largest_saved_logits(strategy, 4) <= 4
        # One chunk for everything: the completion tokens' logits only, never the prompts'.
        assert largest_saved_logits(strategy, None) == tokens


def test_auto_and_heads():
    model = model_with("sdpa")
    assert resolve_strategy(model, "auto") == "shared_prompt"
    model.config._attn_implementation = "flash_attention_2"
    assert resolve_strategy(model, "auto") == "packed"
    with pytest.raises(ValueError, match="shared_prompt needs a block attention mask"):
        resolve_strategy(model, "shared_prompt")
    model.config._attn_implementation = "sdpa"
    assert _output_head(model) is model.lm_head
    model.config.final_logit_softcapping = 30.0  # a head-only recomputation would skip the cap
    assert _output_head(model) is None
    with pytest.raises(ValueError, match="unknown forward strategy 'fast'; available: auto, baseline"):
        resolve_strategy(model, "fast")


def test_softcapped_models_fall_back_to_the_models_own_logits(batches):
    model = model_with("sdpa")
    base = sequence_logps(model, batches["pairs"], "baseline")
    model.config.final_logit_softcapping = 30.0  # Llama ignores it; our code must not use the bare head
    for strategy in OTHERS:
        assert_float32_close(sequence_logps(model, batches["pairs"], strategy), base, ulps=2)


@pytest.mark.parametrize("kind", ["pairs", "lists"])
@pytest.mark.parametrize("strategy", OTHERS)
def test_token_entropies_match_the_baseline_and_by_hand_with_their_gradient(batches, kind, strategy):
    """Each completion token's predictive entropy -sum_v p_v log p_v: the same under every
    strategy (chunked LM head included), equal to a softmax of the full logits written
    here, 0 past a completion's end, and with the same gradient."""
    from alignment.logprobs import concatenated_rows

    batch = batches[kind]
    model = model_with("sdpa")
    base = policy_forward(model, batch, "baseline", per_token=True, entropy=True)
    ours = policy_forward(model, batch, strategy, chunk_size=5, per_token=True, entropy=True)
    assert_float32_close(ours.logps, base.logps, ulps=2)
    torch.testing.assert_close(ours.entropies, base.entropies, rtol=0, atol=4e-6)
    assert (base.entropies[batch["completion_attention_mask"] == 0] == 0).all()
    (g_base,) = torch.autograd.grad(base.entropies.sum(), [p for p in model.parameters()][-1])
    (g_ours,) = torch.autograd.grad(ours.entropies.sum(), [p for p in model.parameters()][-1])
    torch.testing.assert_close(g_ours, g_base, rtol=1e-4, atol=1e-5)

    input_ids, attention_mask, in_completion, index = concatenated_rows(batch)
    with torch.no_grad():
        log_p = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float().log_softmax(-1)
    by_hand = -(log_p.exp() * log_p).sum(-1)  # [rows, positions]
    for row, (b, k) in enumerate(index.tolist()):
        positions = in_completion[row, 1:].nonzero().flatten()
        n = int(batch["completion_attention_mask"][b, k].sum())
        torch.testing.assert_close(base.entropies[b, k, :n], by_hand[row, positions], rtol=0, atol=2e-6)
    # Sequence log-probs with entropies: the sums of the per-token ones.
    summed = policy_forward(model, batch, strategy, chunk_size=5, entropy=True)
    assert_float32_close(summed.logps, ours.logps.sum(-1), ulps=4)
