"""A model card (`README.md`) in the output directory: what was trained, from what, on
what, with which loss, and how it scored. The Hub shows it when the directory is pushed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from alignment.config import Config


def _base_model(config: Config) -> str:
    model = config.model
    return model.name_or_path or f"built from {model.config} (random weights, init_seed {model.init_seed})"


def _datasets(config: Config) -> list[str]:
    return [f"{s.path}" + (f" ({s.split})" if s.split != "train" else "") for s in config.data.train]


JUDGE_KINDS = {
    "reward": ("a scalar reward model r(x, y)", "reward_model", "text-classification"),
    "preference": ("a pairwise preference model P(y > y' | x)", "pairwise", "text-classification"),
    "vpl": ("a VPL reward model r(x, y, z), z inferred from a user's labelled pairs", "vpl", None),
}


def _judge_lines(config: Config) -> list[str]:
    head = getattr(config.loss_fn, "model_head", "policy")
    if head not in JUDGE_KINDS:
        return []
    what, judge_type, _ = JUDGE_KINDS[head]
    context = ", user_context: <a JSONL of the user's labelled pairs>" if head == "vpl" else ""
    return [
        f"| judge | {what}; load it with `online.judge: {{type: {judge_type}, name_or_path: <this directory>{context}}}` |"
    ]


def render_model_card(config: Config, metrics: dict[str, float]) -> str:
    lora = f"r={config.lora.r}, alpha={config.lora.alpha:g}" if config.lora else "no (full fine-tune)"
    bits = f"{config.quantization.bits}-bit" if config.quantization else "none"
    losses = "; ".join(f"{s.weight:g} x `{s.name}` {s.params or ''}".rstrip() for s in config.loss)
    # The Hub keys its "use this model" snippet on `library_name`: an adapter loads with
    # PEFT, a full model with transformers. `alignment` is a tag, as TRL tags its runs.
    head = getattr(config.loss_fn, "model_head", "policy")
    front = {
        "library_name": "peft" if config.lora else "transformers",
        "pipeline_tag": JUDGE_KINDS[head][2] if head in JUDGE_KINDS else "text-generation",
        "tags": ["alignment", "preference-optimization", *dict.fromkeys(s.name for s in config.loss)],
    }
    if config.model.name_or_path:
        front["base_model"] = config.model.name_or_path
    hub_sets = [s.path for s in config.data.train if "/" in s.path and not Path(s.path).exists()]
    if hub_sets:
        front["datasets"] = hub_sets
    if front["pipeline_tag"] is None:
        del front["pipeline_tag"]
    trained = "Trained as a judge" if head in JUDGE_KINDS else "Preference-trained"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {Path(config.training['output_dir']).name}",
        "",
        f"{trained} with `alignment`. Base model: **{_base_model(config)}**.",
        "",
        "| | |",
        "|---|---|",
        f"| loss | {losses} |",
        f"| reference | {config.reference.type} |",
        f"| training data | {', '.join(_datasets(config))} |",
        f"| LoRA | {lora} |",
        f"| quantization | {bits} |",
        *_judge_lines(config),
    ]
    if config.online is not None:
        judges = config.online.judge if isinstance(config.online.judge, list) else [config.online.judge]
        named = ", ".join(
            (f"{j.weight:g} * " if len(judges) > 1 else "") + str(j.function or j.name_or_path or j.type)
            for j in judges
            if j is not None
        )
        lines.append(f"| online | {config.online.sampler} sampler, judge {named} |")
    lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items()) if not k.endswith(("_runtime", "per_second"))]
    lines += ["", "## Recipe", "", "The resolved recipe is `alignment_config.yaml` in this directory.", ""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
