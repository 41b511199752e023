"""The tiny recipes' accuracies, measured with the command a user runs.

    python scripts/tiny_recipes.py                    # every recipe, then dpo.yaml's spread; ~15 min on 2 cores
    python scripts/tiny_recipes.py --recipes dpo,ipo --no-spread

Each recipe runs as the README says, in its own subprocess:

    accelerate launch scripts/train.py --config recipes/tiny/<name>.yaml --training.output_dir=<tmp>

and the run records `eval_reward_accuracy` from `<tmp>/eval_results.json`, the step-0 value
from `trainer_state.json` (the recipes that set `eval_on_start`), and the wall time of the
whole command (interpreter start-up, imports, data, training and the final evaluation).

The number a user sees can differ from ours: the float reductions depend on the thread
count and the CPU's instruction set, and the tiny model is small enough for that to move
its accuracy. So `dpo.yaml`, the README's first command, is also run again as it is (the same
machine must give the same number), with `--training.seed` 1 to 4 (another data order: a
proxy for how far a small numerical change moves the result), and with `OMP_NUM_THREADS`
set to the thread counts the default did not use. The docs state the range of all those
runs.

accelerate launch sets the training process's `OMP_NUM_THREADS` on CPU (to the variable's
value if it is set, else to the physical cores per process when there are several, else
1), so the thread count is read where it applies: `accelerate launch` runs this script
with `--report-threads` once (torch's `get_num_threads()` there), and each training
process's environment is read while it runs.

The record goes to `benchmarks/tiny-recipes-<YYYY-MM-DD>-<commit7>.json`;
`python scripts/generate_docs.py` renders its tables into docs/quickstart.md and README.md.
This module imports nothing heavy at the top: generate_docs imports it for the renderers.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:  # scripts/ is not a package
    sys.path.insert(0, str(ROOT / "scripts"))

import benchmark  # noqa: E402  (light: no torch at import)

SERIES = "tiny-recipes"
# The offline tiny recipes the docs' table lists, in its order, with what each trains on.
RECIPES = {
    "dpo": "pairs",
    "ipo": "pairs",
    "rdpo": "pairs",
    "rpo": "pairs",
    "hinge": "pairs",
    "lipo": "lists, K = 4",
    "listmle": "lists, K = 4",
    "exo_pair": "pairs",
    "nca_pair": "pairs",
    "bco_pair": "pairs",
    "sppo_hard": "pairs",
    "apo_zero": "pairs",
    "apo_down": "pairs",
    "discopop": "pairs",
    "sigmoid_norm": "pairs",
    "aot": "pairs",
    "aot_unpaired": "pairs",
    "kto": "pairs as unpaired rows",
    "kto_unpaired": "unpaired (`unpaired_train.jsonl`)",
    "simpo": "pairs, no reference",
    "cpo": "pairs, no reference",
    "orpo": "pairs, no reference",
    "sft": "pairs (chosen only), no reference",
}
SPREAD_RECIPE = "dpo"
SPREAD_SEEDS = (1, 2, 3, 4)
SPREAD_THREADS = (1, 2)
README_ROWS = ("dpo", "ipo", "lipo", "kto_unpaired", "simpo", "sft")  # dpo and 5 others: each kind of data
COMMAND = "accelerate launch scripts/train.py --config recipes/tiny/{name}.yaml --training.output_dir=<tmp>"


# ----------------------------------------------------------------------------- measuring


def _training_process_env(launcher: int) -> dict[str, str]:
    """The environment of the process `accelerate launch` started (its child running train.py),
    read from /proc while it runs; {} if it could not be read."""
    import psutil  # accelerate's own dependency

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(launcher).children(recursive=True):
                if "scripts/train.py" in " ".join(child.cmdline()):
                    return child.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return {}
        time.sleep(0.05)
    return {}


def launch(name: str, overrides: list[str], env_overrides: dict[str, str], work: Path) -> dict:
    """One run of the README's command (plus `overrides`, with `env_overrides` in its environment)."""
    out = work / f"{name}-{len(list(work.iterdir()))}"
    command = ["accelerate", "launch", "scripts/train.py", "--config", f"recipes/tiny/{name}.yaml"]
    command += [f"--training.output_dir={out}", *overrides]
    env = {**os.environ, **env_overrides}
    load_before = os.getloadavg()[0]  # other work on the machine lengthens the wall time: the record shows it
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = _training_process_env(proc.pid)
    log, _ = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(log[-4000:], file=sys.stderr)
        raise SystemExit(f"tiny_recipes: {name} {overrides} failed with status {proc.returncode}")
    final = json.loads((out / "eval_results.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    step0 = [
        e["eval_reward_accuracy"] for e in state["log_history"] if e.get("step") == 0 and "eval_reward_accuracy" in e
    ]
    import yaml

    resolved = yaml.safe_load((out / "alignment_config.yaml").read_text())
    training = resolved.get("training", {})
    shown = " ".join(
        [*(f"{k}={v}" for k, v in env_overrides.items()), COMMAND.format(name=name), *overrides]
    )  # the command with the temporary directory as <tmp>
    return {
        "recipe": name,
        "command": shown,
        "eval_reward_accuracy": final["eval_reward_accuracy"],
        "eval_reward_accuracy_step0": step0[0] if step0 else None,
        "wall_s": round(wall, 2),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        "global_step": state.get("global_step"),
        "num_train_epochs": training.get("num_train_epochs"),
        "learning_rate": training.get("learning_rate"),
        "seed": training.get("seed"),
        # What the training process got from accelerate launch (None: not set there, or unreadable).
        "omp_num_threads_in_process": seen.get("OMP_NUM_THREADS"),
    }


def report_threads(path: Path) -> None:
    """Run under `accelerate launch`: what torch reports in a process it starts."""
    import torch

    path.write_text(
        json.dumps({"torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")})
    )


def probe_threads(env_overrides: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "threads.json"
        command = ["accelerate", "launch", "scripts/tiny_recipes.py", "--report-threads", str(result)]
        subprocess.run(command, cwd=ROOT, env={**os.environ, **env_overrides}, check=True, capture_output=True)
        return json.loads(result.read_text())


def cpu_flags() -> list[str]:
    """The instruction-set extensions that change float kernels (and so the tiny model's numbers)."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in have]
    return []


def measure(names: list[str], spread: bool, argv: list[str]) -> dict:
    default_threads = probe_threads({})
    record = {
        "preset": SERIES,
        "series": SERIES,
        **benchmark.provenance(["python", "scripts/tiny_recipes.py", *argv]),
        "versions": benchmark.package_versions("torch", "transformers", "accelerate", "trl", "datasets", "alignment"),
        "torch_threads": default_threads["torch_threads"],  # in a process accelerate launch starts here
        "omp_num_threads_set_by_accelerate": default_threads["OMP_NUM_THREADS"],
        "omp_num_threads_in_caller": os.environ.get("OMP_NUM_THREADS"),
        "run_command": COMMAND,
        "recipes": {},
        "spread": [],
    }
    record["machine"]["cpu_flags"] = cpu_flags()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in names:
            os.sync()  # earlier jobs' pending writes are flushed now, not during a timed run
            record["recipes"][name] = run = launch(name, [], {}, work)
            print(
                f"{name}: {run['eval_reward_accuracy']:.4f} (step 0: {run['eval_reward_accuracy_step0']}) "
                f"{run['wall_s']:.1f} s",
                flush=True,
            )
        if spread:
            variants: list[tuple[str, list[str], dict[str, str]]] = [("a second run", [], {})]
            variants += [(f"--training.seed={s}", [f"--training.seed={s}"], {}) for s in SPREAD_SEEDS]
            variants += [
                (f"OMP_NUM_THREADS={t}", [], {"OMP_NUM_THREADS": str(t)})
                for t in SPREAD_THREADS
                if t != default_threads["torch_threads"]
            ]
            for label, overrides, env in variants:
                run = launch(SPREAD_RECIPE, overrides, env, work)
                if env:
                    run["torch_threads"] = probe_threads(env)["torch_threads"]
                record["spread"].append({"variant": label, **run})
                print(f"{SPREAD_RECIPE} {label}: {run['eval_reward_accuracy']:.4f}", flush=True)
    return record


# ----------------------------------------------------------------------------- rendering (docs)


def _accuracy(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def dpo_range(record: dict) -> tuple[float, float, int] | None:
    """(lowest, highest, runs) of dpo.yaml's accuracy over its default run and its spread."""
    values = [r["eval_reward_accuracy"] for r in record["spread"]]
    if SPREAD_RECIPE in record["recipes"]:
        values.append(record["recipes"][SPREAD_RECIPE]["eval_reward_accuracy"])
    return (min(values), max(values), len(values)) if record["spread"] else None


def _how_measured(path: Path, record: dict) -> str:
    versions = record["versions"]
    stack = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "alignment")
    commit = benchmark.commit_state(record)
    machine = record["machine"]
    flags = machine.get("cpu_flags")
    threads = record["torch_threads"]
    set_by = record.get("omp_num_threads_set_by_accelerate")
    thread_note = f"{threads} torch thread{'s' if threads != 1 else ''} in the training process" + (
        f" (`accelerate launch` set `OMP_NUM_THREADS={set_by}`)" if set_by else ""
    )
    return (
        f"Measured by `{record['command']}`: each row is `{record['run_command'].replace('{name}', '<name>')}` "
        "in a subprocess, its wall "
        f"time the whole command's (start-up, data, training and the final evaluation). {record['date']}, commit "
        f"{commit}; {stack}; {machine['cpu']}, {machine['cores']} cores"
        + (f" ({', '.join(flags)})" if flags else "")
        + f", {thread_note}. Recorded in `{benchmark.relative(path)}`."
    )


def _range_note(record: dict) -> str:
    """dpo.yaml's number, what each variant of its command gave, and the range they span."""
    found = dpo_range(record)
    if found is None:
        return ""
    low, high, runs = found
    dpo = record["recipes"].get(SPREAD_RECIPE)
    value = dpo["eval_reward_accuracy"] if dpo else None

    def label(run: dict) -> str:
        return "a second run" if dpo and run["command"] == dpo["command"] else f"`{run['variant']}`"

    same = [label(r) for r in record["spread"] if r["eval_reward_accuracy"] == value]
    other = [
        f"{label(r)} {r['eval_reward_accuracy']:.4f}" for r in record["spread"] if r["eval_reward_accuracy"] != value
    ]
    text = f"`{SPREAD_RECIPE}.yaml` gave {value:.4f}" if dpo else f"`{SPREAD_RECIPE}.yaml`"
    if same:
        text += f", and the same with {' and '.join(same)}"
    if other:
        text += f"; {', '.join(other)}"
    return (
        f"{text}. Over these {runs} runs: **{low:.4f} to {high:.4f}**, the range to expect from the command. "
        "Another data order (`--training.seed`) stands in for the small numerical differences another machine "
        "brings (other library builds, another instruction set such as AVX-512 or AMX), which were not measured "
        "directly."
    )


def _newest() -> tuple[Path, dict]:
    found = benchmark.newest(SERIES)
    if found is None:
        raise SystemExit(f"no benchmarks/{SERIES}-*.json: run python scripts/tiny_recipes.py")
    return found


def _rows(record: dict, names) -> list[str]:
    lines = [
        "| recipe (`recipes/tiny/`) | data | epochs, learning rate | `eval_reward_accuracy` at step 0 "
        "| after training | wall time of the command (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        run = record["recipes"][name]
        lines.append(
            f"| `{name}.yaml` | {RECIPES.get(name, '')} | {run['num_train_epochs']}, {run['learning_rate']:g} "
            f"| {_accuracy(run['eval_reward_accuracy_step0'])} | **{_accuracy(run['eval_reward_accuracy'])}** "
            f"| {run['wall_s']:.0f} |"
        )
    return lines


def render_table(found: tuple[Path, dict] | None = None) -> str:
    """Every tiny recipe of the newest record (docs/quickstart.md)."""
    path, record = found or _newest()
    lines = _rows(record, [n for n in RECIPES if n in record["recipes"]])
    lines += [
        "",
        "At step 0 the policy equals its reference, so the losses with one start from a tie (0.5); the "
        "reference-free ones (simpo, cpo, orpo, sft) start from the random model's own preference.",
    ]
    note = _range_note(record)
    if note:
        lines += ["", note]
    lines += ["", _how_measured(path, record)]
    return "\n".join(lines)


def render_readme(found: tuple[Path, dict] | None = None) -> str:
    """dpo.yaml, five other rows, dpo's range and how it was measured (README.md)."""
    path, record = found or _newest()
    lines = _rows(record, [n for n in README_ROWS if n in record["recipes"]])
    note = _range_note(record)
    if note:
        lines += ["", note]
    lines += ["", _how_measured(path, record), "", "Every tiny recipe: [Quickstart](docs/quickstart.md)."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", help=f"comma-separated subset of {', '.join(RECIPES)} (default all)")
    parser.add_argument("--no-spread", action="store_true", help=f"skip {SPREAD_RECIPE}.yaml's seeds and threads")
    parser.add_argument("--out", help="JSON file (default benchmarks/tiny-recipes-<YYYY-MM-DD>-<commit7>.json)")
    parser.add_argument("--report-threads", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.report_threads:
        report_threads(Path(args.report_threads))
        return 0
    names = args.recipes.split(",") if args.recipes else list(RECIPES)
    unknown = [n for n in names if not (ROOT / "recipes" / "tiny" / f"{n}.yaml").exists()]
    if unknown:
        raise SystemExit(f"tiny_recipes: no recipes/tiny/{unknown[0]}.yaml")
    record = measure(names, not args.no_spread, sys.argv[1:] if argv is None else argv)
    # The commit state and time as the record is written, as benchmark.py records them: after the runs.
    end = benchmark.provenance([])
    record.update({k: end[k] for k in ("recorded_at", "commit", "uncommitted_changes", "uncommitted_paths")})
    out = benchmark.write_record(record, args.out)
    print(render_table((out, record)))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
