"""The benchmark records and the docs rendered from them (no benchmark runs here): every
record under benchmarks/ carries its provenance, each series shows its newest record, and
the tables show the records' own values with the ratios computed from them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import benchmark  # noqa: E402
import tiny_recipes  # noqa: E402

RECORDS = sorted(benchmark.BENCHMARKS.glob("*.json"))


def test_there_are_records():
    assert RECORDS, "benchmarks/ holds no JSON record"


@pytest.mark.parametrize("path", RECORDS, ids=[p.name for p in RECORDS])
def test_every_record_has_its_provenance_and_is_named_by_it(path):
    record = json.loads(path.read_text())
    for field in benchmark.PROVENANCE:
        assert field in record, f"{path.name} has no {field!r} (write {benchmark.NOT_RECORDED!r} if unknown)"
        value = record[field]
        assert value == benchmark.NOT_RECORDED or value not in (None, "", {}), (path.name, field)
    if record["versions"] != benchmark.NOT_RECORDED:
        assert all(v for v in record["versions"].values()), path.name
    match = benchmark.RECORD_NAME.fullmatch(path.name)
    assert match, f"{path.name} is not <series>-<YYYY-MM-DD>-<commit7>.json"
    assert match["series"] == record["series"]
    assert match["date"] == record["date"]
    assert record["commit"].startswith(match["commit"])
    assert record["series"] in benchmark.SERIES or record["series"] == tiny_recipes.SERIES
    # A record without a recorded time is ordered by when git first held it.
    assert record.get("recorded_at") or record.get("committed_at"), path.name


def _write(directory: Path, series: str, day: str, commit: str, **fields) -> Path:
    path = benchmark.record_path(series, day, commit, directory)
    record = {"series": series, "date": day, "commit": commit, **fields}
    path.write_text(json.dumps(record))
    return path


def test_a_series_is_its_files_and_the_newest_one_is_current(tmp_path):
    old = _write(tmp_path, "cpu-small", "2026-12-01", "a" * 40, committed_at="2026-12-01T10:00:00+00:00")
    late = _write(tmp_path, "cpu-small", "2026-12-02", "b" * 40, committed_at="2026-12-02T23:00:00+00:00")
    early = _write(tmp_path, "cpu-small", "2026-12-02", "c" * 40, recorded_at="2026-12-02T08:00:00+00:00")
    again = _write(tmp_path, "cpu-small", "2026-12-02", "c" * 40, recorded_at="2026-12-02T09:00:00+00:00")
    other = _write(tmp_path, "cpu-small-engines", "2026-12-03", "d" * 40, recorded_at="2026-12-03T00:00:00+00:00")
    assert early.name == "cpu-small-2026-12-02-ccccccc.json"
    assert again.name == "cpu-small-2026-12-02-ccccccc-2.json"  # the same day and commit: a new file, not overwritten
    assert [p for p, _ in benchmark.records("cpu-small", tmp_path)] == [old, early, again, late]
    assert benchmark.newest("cpu-small", tmp_path)[0] == late
    assert benchmark.newest("cpu-small-engines", tmp_path)[0] == other
    assert benchmark.newest("listwise-cpu", tmp_path) is None


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {first_cell} |")
    ]


@pytest.mark.parametrize("series", [s for s, spec in benchmark.SERIES.items() if spec.kind == "offline"])
def test_offline_tables_show_the_newest_records_values_and_ratios(series):
    found = benchmark.newest(series)
    if found is None:
        assert "Not run yet" in benchmark.render_series(series)
        return
    path, record = found
    text = benchmark.render_series(series)
    assert benchmark.relative(path) in text
    for run, r in record["runs"].items():
        (row,) = _table_rows(text, run)
        assert row[1] == f"{r['wall_s']:.1f}"
        assert row[2] == f"{r['tokens_per_s']:.0f}"
        assert row[3].startswith(f"{r['peak_memory_gb']:.2f}")
        assert row[4] == f"{r['first_loss']:.6f}"
        if "of_peak" in r:
            assert row[6] == f"{100 * r['of_peak']:.1f}%"
    runs = record["runs"]
    best_tokens = max(runs[r]["tokens_per_s"] for r in ("trl-default", "trl-best"))
    best_memory = min(runs[r]["peak_memory_gb"] for r in ("trl-default", "trl-best"))
    speedup, memory = runs["ours"]["tokens_per_s"] / best_tokens, runs["ours"]["peak_memory_gb"] / best_memory
    assert f"tokens/s **x{speedup:.2f}**" in text
    assert f"peak memory **x{memory:.2f}**" in text
    ratios = benchmark.offline_ratios(record)
    assert ratios["tokens_per_s"] == pytest.approx(record["speedup_vs_best_trl"])
    assert ratios["wall"] == pytest.approx(record["wall_ratio_vs_best_trl"])
    assert ratios["peak_memory"] == pytest.approx(record["memory_ratio_vs_best_trl"])


def test_the_ratios_are_ours_against_the_better_trl_run_on_each_metric():
    runs = {
        "ours": {"tokens_per_s": 100.0, "wall_s": 2.0, "peak_memory_gb": 1.0, "first_loss": 0.69},
        "trl-default": {"tokens_per_s": 10.0, "wall_s": 20.0, "peak_memory_gb": 2.0, "first_loss": 0.69},
        "trl-best": {"tokens_per_s": 25.0, "wall_s": 8.0, "peak_memory_gb": 4.0, "first_loss": 0.7},
    }
    ratios = benchmark.offline_ratios({"runs": runs})
    assert ratios["tokens_per_s"] == 4.0  # against trl-best's 25 tokens/s
    assert ratios["wall"] == 0.25  # against trl-best's 8 s
    assert ratios["peak_memory"] == 0.5  # against trl-default's 2 GiB
    assert ratios["first_loss_difference"] == pytest.approx(0.01)


@pytest.mark.parametrize("series", [s for s, spec in benchmark.SERIES.items() if spec.kind == "online"])
def test_online_ratios_are_the_runs_quotients_and_the_table_shows_the_newest(series):
    for _, record in benchmark.records(series):
        recomputed = benchmark.online_ratios(record)
        assert set(recomputed) == set(record["ratios"])
        for name, stored in record["ratios"].items():
            for metric, value in stored.items():
                assert recomputed[name][metric] == pytest.approx(value), (name, metric)
    path, record = benchmark.newest(series)
    text = benchmark.render_series(series)
    assert benchmark.relative(path) in text
    for run, r in record["runs"].items():
        (row,) = _table_rows(text, run)[:1]
        assert row[2:5] == [f"{r['wall_s']:.1f}", f"{r['samples_per_s']:.3f}", f"{r['tokens_per_s']:.1f}"]
        assert row[8] == f"{100 * r['of_peak']:.1f}%"
    for name, q in benchmark.online_ratios(record).items():
        assert f"| {name} | x{q['samples_per_s']:.2f} | x{q['wall']:.2f} | x{q['peak_memory']:.2f} |" in text


def test_the_recipe_comparison_shows_both_sides_steps_and_accuracies():
    path, record = benchmark.newest("grpo-recipe-vs-trl")
    text = benchmark.render_series("grpo-recipe-vs-trl")
    ours, trl = record["ours"], record["trl"]
    assert f"| {ours['steps']} | {ours['train_s']:.1f} | {ours['train_s'] / ours['steps']:.1f} |" in text
    assert f"{trl['accuracy_before']:.2f} → **{trl['accuracy_after']:.2f}**" in text
    rate = (ours["steps"] / ours["train_s"]) / (trl["steps"] / trl["train_s"])
    assert f"**x{rate:.2f}**" in text


def test_every_section_says_how_its_run_was_measured():
    text = benchmark.render_benchmarks_md()
    for series in benchmark.SERIES:
        found = benchmark.newest(series)
        if found is not None:
            path, record = found
            assert f"Measured by `{record['command']}` on {record['date']}" in text
            assert f"Record: `{benchmark.relative(path)}`" in text
            assert f"torch threads: {record['torch_threads']}" in text


TINY = {
    "series": "tiny-recipes",
    "command": "python scripts/tiny_recipes.py",
    "run_command": tiny_recipes.COMMAND,
    "date": "2026-12-08",
    "commit": "f" * 40,
    "uncommitted_changes": False,
    "versions": {"python": "3.11.7", "torch": "2.13.0+cpu"},
    "torch_threads": 1,
    "omp_num_threads_set_by_accelerate": "1",
    "machine": {"cpu": "AMD EPYC", "cores": 2, "cpu_flags": ["avx2"]},
    "recipes": {
        name: {
            "eval_reward_accuracy": 0.9 + i / 1000,
            "eval_reward_accuracy_step0": 0.5,
            "wall_s": 20.0 + i,
            "num_train_epochs": 3,
            "learning_rate": 0.003,
        }
        for i, name in enumerate(tiny_recipes.RECIPES)
    },
    "spread": [
        {"variant": "a second run", "command": "<dpo>", "eval_reward_accuracy": 0.9},
        {"variant": "--training.seed=1", "command": "<dpo> --training.seed=1", "eval_reward_accuracy": 0.8875},
        {"variant": "OMP_NUM_THREADS=2", "command": "OMP_NUM_THREADS=2 <dpo>", "eval_reward_accuracy": 0.9575},
    ],
}
TINY["recipes"]["dpo"]["command"] = "<dpo>"


def test_tiny_tables_show_the_records_values_and_dpos_range():
    found = (ROOT / "benchmarks" / "tiny-recipes-2026-12-08-fffffff.json", TINY)
    full, readme = tiny_recipes.render_table(found), tiny_recipes.render_readme(found)
    for name, run in TINY["recipes"].items():
        (row,) = _table_rows(full, f"`{name}.yaml`")
        assert row[3:6] == ["0.5000", f"**{run['eval_reward_accuracy']:.4f}**", f"{run['wall_s']:.0f}"]
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `dpo.yaml` |") and len(rows) <= 6
    # The range covers the default command's run and the spread's.
    assert tiny_recipes.dpo_range(TINY) == (0.8875, 0.9575, 4)
    for text in (full, readme):
        assert "**0.8875 to 0.9575**" in text
        assert (
            "gave 0.9000, and the same with a second run; `--training.seed=1` 0.8875, `OMP_NUM_THREADS=2` 0.9575"
            in text
        )
        assert "Measured by `python scripts/tiny_recipes.py`" in text
        assert "1 torch thread in the training process (`accelerate launch` set `OMP_NUM_THREADS=1`)" in text
        assert "benchmarks/tiny-recipes-2026-12-08-fffffff.json" in text


def test_the_newest_tiny_record_covers_every_recipe_and_its_default_is_inside_the_range():
    found = benchmark.newest(tiny_recipes.SERIES)
    assert found is not None, "no benchmarks/tiny-recipes-*.json: the README's tiny table is rendered from it"
    record = found[1]
    assert set(record["recipes"]) == set(tiny_recipes.RECIPES)
    low, high, _ = tiny_recipes.dpo_range(record)
    assert low <= record["recipes"]["dpo"]["eval_reward_accuracy"] <= high


def test_generated_parts_name_their_files_and_the_module_loads_without_torch():
    parts = benchmark.generated_parts()
    assert ("BENCHMARKS.md", "*") in parts
    assert ("docs/quickstart.md", "tiny-recipes") in parts
    assert ("README.md", "tiny-recipes-readme") in parts
    for series in benchmark.SERIES:
        assert ("docs/performance.md", f"benchmark-{series}") in parts
    # scripts/generate_docs.py imports scripts/benchmark.py by path, unregistered; that must stay quick.
    probe = (
        "import importlib.util, sys; "
        "spec = importlib.util.spec_from_file_location('_b', 'scripts/benchmark.py'); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); m.generated_parts(); "
        "print(sorted(k for k in ('torch', 'transformers', 'trl') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_commit_state_says_how_the_code_that_ran_differed_from_the_commit():
    state = benchmark.commit_state
    assert state({"commit": "a" * 40, "uncommitted_changes": False, "uncommitted_paths": []}) == "aaaaaaa"
    assert state({"commit": "a" * 40, "uncommitted_changes": True, "uncommitted_paths": []}) == (
        "aaaaaaa (uncommitted changes outside alignment, scripts, recipes only)"
    )
    assert state({"commit": "a" * 40, "uncommitted_changes": True, "uncommitted_paths": ["alignment/run.py"]}) == (
        "aaaaaaa with uncommitted changes to 1 file of alignment, scripts, recipes (the record lists them)"
    )
    assert state({"commit": "a" * 40, "uncommitted_changes": True}) == "aaaaaaa with uncommitted changes"
    assert state({"commit": "a" * 40, "uncommitted_changes": benchmark.NOT_RECORDED}) == (
        "aaaaaaa (uncommitted changes not recorded)"
    )
