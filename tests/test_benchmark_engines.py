"""The online benchmark's engine and dtype variants (`--engine native,vllm --dtype ...`;
no timings, no vLLM needed): run labels, the recipe overrides, the breakdown of an engine
that generates outside `training_step`, and the one-line refusal without vLLM."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import benchmark  # noqa: E402

PRESET = benchmark.ONLINE_PRESETS["grpo-smollm2-cpu"]


def test_variant_labels():
    assert benchmark.online_variants(["ours", "trl-grpo"], ["native"], ["float32"]) == {
        "ours": ("ours", "native", "float32"),
        "trl-grpo": ("trl-grpo", "native", "float32"),
    }
    variants = benchmark.online_variants(["ours"], ["native", "vllm"], ["float32", "bfloat16"])
    assert list(variants) == [
        "ours native float32",
        "ours vllm float32",
        "ours native bfloat16",
        "ours vllm bfloat16",
    ]
    assert variants["ours vllm bfloat16"] == ("ours", "vllm", "bfloat16")
    assert list(benchmark.online_variants(["ours"], ["vllm"], ["float32"])) == ["ours vllm float32"]


def test_engine_overrides_make_a_valid_vllm_recipe(tmp_path, monkeypatch):
    from alignment.config import load_config

    # The recipe is checked; vLLM is not started.
    monkeypatch.setattr("alignment.online.engines.base.vllm_available", lambda: True)

    benchmark.build_online_assets(PRESET, tmp_path, steps=1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(benchmark.online_recipe(PRESET, tmp_path)))
    assert benchmark.engine_overrides("native", 1) == []
    config = load_config(recipe, ["--training.max_steps=1", *benchmark.engine_overrides("vllm", 2)])
    online = config.online
    assert (online.engine, online.vllm_mode, online.vllm_dtype) == ("vllm", "colocate", "auto")
    assert online.vllm_cpu_kvcache_space_gib == 2


def test_generation_outside_the_step_comes_out_of_the_loop_not_the_step():
    """An external engine generates (and syncs) in get_batch_samples, before training_step."""

    class Owner:
        def training_step(self):
            self.backward()

        def backward(self):
            return None

        def draw(self):
            return None

        def load_weights(self):
            return None

    owner, timers = Owner(), benchmark.StepTimers()
    timers.wrap(owner, "training_step", "step")
    timers.wrap(owner, "backward", "backward")
    timers.wrap(owner, "draw", "generation")
    timers.wrap(owner, "load_weights", "engine sync")
    owner.load_weights()
    owner.draw()
    owner.training_step()
    assert set(timers.outside) == {"generation", "engine sync"} and "backward" not in timers.outside
    timers.seconds.update({"step": 3.0, "backward": 2.0, "generation": 4.0, "engine sync": 1.0})
    timers.outside.update({"generation": 4.0, "engine sync": 1.0})
    parts = timers.breakdown(wall=10.0)
    assert list(parts) == list(benchmark.BREAKDOWN)
    assert parts["generation"] == pytest.approx(5.0)  # the sync counted in generation
    assert parts["rest of training_step"] == pytest.approx(1.0)
    assert parts["rest of the loop"] == pytest.approx(2.0)
    assert sum(parts.values()) == pytest.approx(10.0)


def test_vllm_asked_without_vllm_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert benchmark.main(["--preset", "grpo-smollm2-cpu", "--runs", "ours", "--engine", "vllm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--engine vllm needs vLLM" in err[0]


def test_engine_refusals():
    with pytest.raises(SystemExit, match="not TRL's"):
        benchmark.main(["--preset", "grpo-smollm2-cpu", "--runs", "ours,trl-grpo", "--engine", "vllm"])
    with pytest.raises(SystemExit, match="unknown --dtype"):
        benchmark.main(["--preset", "grpo-smollm2-cpu", "--dtype", "float16"])
    with pytest.raises(SystemExit):
        benchmark.main(["--preset", "cpu-small", "--engine", "vllm"])


def test_markdown_shows_the_engines_sync_and_each_dtypes_peak():
    def run(engine: str, dtype: str) -> dict:
        vllm = engine == "vllm"
        parts = dict.fromkeys(benchmark.BREAKDOWN, 1.0)
        return {
            "run": "ours",
            "loss": "grpo",
            "engine": engine,
            "dtype": dtype,
            "wall_s": 9.0,
            "samples_per_s": 1.0,
            "tokens_per_s": 2.0,
            "peak_memory_gb": 3.0,
            "rss_after_loading_gb": 1.0,
            "achieved_tflops": 0.1,
            "of_peak": 0.5,
            "matmul_peak_around_tflops": [0.2, 0.2],
            "mean_reward": None,
            "breakdown_s": parts,
            "generation_calls": [{"s": 0.5, "decode_steps": 24, "samples": 16}],
            "setup_s": 6.0 if vllm else 1.0,
            "engine_sync_s": 0.4 if vllm else 0.0,
            "engine_sync_calls": 2 if vllm else 0,
            "engine_logs_mean": {"logp_difference_mean": 0.01, "logp_difference_max": 0.1} if vllm else {},
        }

    summary = {
        "dtype": "float32,bfloat16",
        "matmul_peak_tflops": 0.19,
        "matmul_peak_tflops_by_dtype": {"float32": 0.19, "bfloat16": 0.41},
        "runs": {"ours native float32": run("native", "float32"), "ours vllm bfloat16": run("vllm", "bfloat16")},
        "ratios": {},
    }
    text = benchmark.online_markdown(summary)
    assert "0.1900 TFLOP/s (float32), 0.4100 TFLOP/s (bfloat16)" in text
    assert "| (of which engine weight sync) | 0.0 (0%) | 0.4 (4%) |" in text
    assert "| ours vllm bfloat16 | 6.0 | 2 | 0.20 | 1.00e-02 / 1.00e-01 |" in text
