"""Recipe validation and dotted overrides: every error names the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from alignment.config import ConfigError, ModelConfig, SourceConfig, apply_overrides, load_config, parse_override
from tests.helpers import ROOT

TINY_DPO = ROOT / "recipes" / "tiny" / "dpo.yaml"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_tiny_recipe_resolves_with_defaults():
    config = load_config(TINY_DPO)
    assert config.loss[0].name == "dpo" and config.loss[0].params == {"beta": 0.1}
    assert config.reference.type == "model"
    assert config.data.bad_rows == "error"
    assert config.resolved["data"]["train"][0]["path"] == "recipes/tiny/data/pairs_train.jsonl"
    assert config.training["output_dir"] == "outputs/tiny-dpo"


def test_override_parses_yaml_types():
    assert parse_override("--loss.beta=0.5") == (["loss", "beta"], 0.5)
    assert parse_override("--training.eval_on_start=false") == (["training", "eval_on_start"], False)
    assert parse_override("--data.max_length=null") == (["data", "max_length"], None)
    with pytest.raises(ConfigError, match="--section.key=value"):
        parse_override("--lossbeta")


def test_swapping_the_loss_is_one_edit(caplog):
    config = load_config(TINY_DPO, ["--loss.name=ipo", "--loss.tau=0.5"])
    assert config.loss[0].name == "ipo"
    assert config.loss[0].params == {"tau": 0.5}
    assert "loss.beta=0.1 from the recipe does not apply to loss 'ipo'; dropped" in caplog.text


def test_cli_parameter_the_new_loss_lacks_is_an_error():
    with pytest.raises(ConfigError, match="loss 'ipo' has no parameter 'beta'"):
        load_config(TINY_DPO, ["--loss.name=ipo", "--loss.beta=0.5"])


def test_unknown_loss_lists_available():
    with pytest.raises(ConfigError) as err:
        load_config(TINY_DPO, ["--loss.name=dpoo"])
    for name in ("dpo", "ipo", "rdpo", "rpo", "hinge", "lipo", "listmle"):
        assert name in str(err.value)


def test_rdpo_epsilon_out_of_range_names_the_range():
    with pytest.raises(ConfigError, match=r"0 <= epsilon < 0\.5"):
        load_config(TINY_DPO, ["--loss.name=rdpo", "--loss.epsilon=0.7"])


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("--model.dtype=float8", "model.dtype: 'float8' is not allowed; allowed values: 'auto', 'float32'"),
        ("--model.colour=red", "model: unknown key 'colour'; allowed keys: name_or_path, config"),
        ("--data.bad_rows=ignore", "data.bad_rows: 'ignore' is not allowed; allowed values: 'error', 'skip'"),
        ("--data.max_length=ten", "data.max_length: expected an integer, got 'ten'"),
        ("--data.max_prompt_length=40", "data.max_prompt_length (40) must be smaller than data.max_length (32)"),
        ("--training.learning_rat=0.1", "training: unknown key 'learning_rat'"),
        ("--reference.type=adaptor", "reference.type: 'adaptor' is not allowed"),
        ("--reference.type=none", "reference: 'none' but loss dpo needs a reference"),
        (
            "--optimizer.lr=1",
            "unknown section 'optimizer'; sections: model, lora, quantization, data, reference, loss, online, evaluation, training",
        ),
        ("--model.config=recipes/tiny/no-such-model", "model.config: path 'recipes/tiny/no-such-model' does not exist"),
        ("--loss.weight=heavy", "loss.weight: expected a number, got 'heavy'"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, phrase):
    with pytest.raises(ConfigError) as err:
        load_config(TINY_DPO, [override])
    assert phrase in str(err.value)


def test_missing_data_file_fails_before_loading(tmp_path):
    recipe = yaml.safe_load(TINY_DPO.read_text())
    recipe["data"]["train"] = [str(tmp_path / "missing.jsonl")]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="missing.jsonl': file not found"):
        load_config(path)


def test_composite_loss_and_indexed_override(tmp_path):
    recipe = yaml.safe_load(TINY_DPO.read_text())
    recipe["loss"] = [{"name": "dpo", "beta": 0.1}, {"name": "listmle", "weight": 0.5}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    config = load_config(path, ["--loss.1.beta=0.3"])
    assert [(s.name, s.weight, s.params) for s in config.loss] == [
        ("dpo", 1.0, {"beta": 0.1}),
        ("listmle", 0.5, {"beta": 0.3}),
    ]
    # A list's weights are checked at load by the losses' own builder, naming the block.
    for weight, shown in (("-0.5", "-0.5"), (".nan", "nan"), (".inf", "inf")):
        with pytest.raises(ConfigError, match=f"^loss.1: weight must be a finite number >= 0, got {shown}$"):
            load_config(path, [f"--loss.1.weight={weight}"])
    assert load_config(path, ["--loss.1.weight=0"]).loss_fn.terms[1][0] == 0.0


def test_yaml_is_read_with_the_safe_loader(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_apply_overrides_creates_missing_sections():
    raw = apply_overrides({}, ["--training.output_dir=out"])
    assert raw == {"training": {"output_dir": "out"}}


def test_cli_rejects_a_misspelt_loss_within_seconds_before_loading(tmp_path):
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", str(TINY_DPO), "--loss.name=dpoo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 2
    assert "unknown loss 'dpoo'; available losses:" in proc.stderr
    assert "listmle" in proc.stderr
    # Nothing was loaded or written: the output directory of the recipe was not created.
    assert "resolved config" not in proc.stdout
    print(f"rejected in {elapsed:.1f}s")


def test_alignment_losses_lists_every_loss_with_paper_and_defaults(capsys):
    from alignment.cli import main
    from alignment.losses import available_losses

    assert main(["losses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # Each loss is a header line "name: summary" followed by indented paper/formula/parameters lines.
    headers = {line.split(":")[0]: i for i, line in enumerate(lines) if not line.startswith(" ")}
    # Every registered loss, whatever is added later; the ones the docs name among them.
    assert set(headers) == set(available_losses())
    assert set(headers) >= {
        *("dpo", "ipo", "rdpo", "rpo", "hinge", "lipo", "listmle", "nash_md", "online_ipo"),
        *("spo", "sppo", "copg", "rloo", "grpo"),
        *("bradley_terry", "plackett_luce", "pairwise_preference", "vpl"),
        *("exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down"),
        *("discopop", "sigmoid_norm", "sft", "simpo", "cpo", "orpo", "kto"),
    }
    for name, i in headers.items():  # paper, formula, parameters and TRL name under each
        assert [line.split(":")[0] for line in lines[i + 1 : i + 5]] == [
            "    paper",
            "    formula",
            "    parameters",
            "    TRL",
        ], name
    expected = {
        "dpo": ("Rafailov et al. 2023", "beta=0.1, label_smoothing=0.0"),
        "ipo": ("Azar et al. 2023", "tau=0.1, length_normalize=True"),
        "rdpo": ("Chowdhury et al. 2024", "beta=0.1, epsilon=0.1"),
        "rpo": ("Liu et al. 2024", "beta=0.1, eta=0.005, nll='sum'"),
        "hinge": ("Zhao et al. 2023", "beta=0.1"),
        "lipo": ("Liu et al. 2024", "beta=0.05"),
        "listmle": ("Plackett-Luce", "beta=0.1"),
        "nash_md": ("Munos et al. 2023", "tau=0.008"),
        "online_ipo": ("Calandriello et al. 2024", "tau=0.1"),
        "bradley_terry": ("Bradley & Terry 1952", "center_rewards_coefficient=0.0, pairs='best_vs_worst'"),
        "vpl": ("Poddar et al. 2024", "kl_weight=0.001, anneal_steps=0"),
    }
    for name, (paper, params) in expected.items():
        paper_line, _, params_line = lines[headers[name] + 1 : headers[name] + 4]
        assert paper in paper_line and params in params_line, name
    # a TRL user finds the loss under TRL's name
    trl = {"dpo": "loss_type='sigmoid'", "rdpo": "loss_type='robust'", "simpo": "CPOTrainer loss_type='simpo'"}
    for name, alias in {**trl, "kto": "KTOTrainer loss_type='kto'", "spo": "none"}.items():
        assert lines[headers[name] + 4].startswith("    TRL: ") and alias in lines[headers[name] + 4], name


def test_reference_shorthand_on_the_command_line(tmp_path):
    from alignment.config import split_args

    config, overrides = split_args(["--config", "r.yaml", "--reference=precompute", "--loss.beta=0.2"])
    assert config == "r.yaml" and overrides == ["--reference.type=precompute", "--loss.beta=0.2"]
    cfg = load_config(ROOT / "recipes/tiny/dpo.yaml", [f"--training.output_dir={tmp_path}", *overrides])
    assert cfg.reference.type == "precompute" and cfg.loss[0].params == {"beta": 0.2}


def test_section_null_removes_an_optional_section(tmp_path):
    """`--evaluation=null` drops a recipe's task-specific evaluation without editing the YAML."""
    from alignment.config import split_args

    _, overrides = split_args(["--config", "r.yaml", "--evaluation=null", f"--training.output_dir={tmp_path}"])
    assert overrides == ["--evaluation=null", f"--training.output_dir={tmp_path}"]
    sppo = ROOT / "recipes/tiny/sppo.yaml"
    assert load_config(sppo, overrides[1:]).evaluation.score == "alignment.tasks.arithmetic:exact_sum"
    config = load_config(sppo, overrides)
    assert config.evaluation is None and config.resolved["evaluation"] is None
    assert config.online is not None  # the other sections are untouched
    dpo = ROOT / "recipes/tiny/dpo.yaml"
    out = f"--training.output_dir={tmp_path}"
    assert load_config(dpo, [out, "--lora.r=4"]).lora.r == 4
    assert load_config(dpo, [out, "--lora.r=4", "--lora=null"]).lora is None
    assert load_config(dpo, [out, "--lora=null", "--lora.r=4"]).lora.r == 4  # later overrides win
    assert load_config(dpo, [out, "--quantization=null", "--online=null"]).quantization is None
    # An online-only loss without its section is the usual one-line error.
    with pytest.raises(ConfigError, match="add an `online:` section"):
        load_config(ROOT / "recipes/tiny/nash_md.yaml", [out, "--online=null"])
    with pytest.raises(ConfigError, match="^override '--model=null': `model` is required and cannot be removed; "):
        load_config(dpo, [out, "--model=null"])
    with pytest.raises(ConfigError, match="a whole section can only be removed, with --evaluation=null; set its keys"):
        load_config(sppo, [out, "--evaluation=3"])


def test_scientific_notation_is_a_number_in_recipes_and_overrides(tmp_path):
    """YAML 1.1 reads `1e-5` as a string; a learning rate must not reach the Trainer as one."""
    assert parse_override("--training.learning_rate=1e-5") == (["training", "learning_rate"], 1e-5)
    assert parse_override('--model.revision="1e5"') == (["model", "revision"], "1e5")  # quoted stays text
    recipe = tmp_path / "r.yaml"
    text = (ROOT / "recipes/tiny/dpo.yaml").read_text().replace("learning_rate: 3.0e-3", "learning_rate: 3e-3")
    recipe.write_text(text)
    cfg = load_config(recipe, [f"--training.output_dir={tmp_path}", "--loss.beta=1e-1"])
    assert cfg.training["learning_rate"] == 3e-3 and cfg.loss[0].params["beta"] == 0.1
    assert cfg.training_arguments().learning_rate == 3e-3


def test_home_directory_paths_are_expanded(tmp_path, monkeypatch):
    """`~/models/x` is a local path, not a Hub id: loaders get it expanded."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "model").mkdir()
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n')
    model = ModelConfig(name_or_path="~/model")
    assert model.name_or_path == str(tmp_path / "model")
    assert SourceConfig(path="~/pairs.jsonl").path == str(tmp_path / "pairs.jsonl")
    with pytest.raises(ConfigError, match="model.gguf_file: '.*/model/weights.gguf' does not exist"):
        ModelConfig(name_or_path="~/model", gguf_file="weights.gguf")


def test_a_missing_smollm2_export_says_how_to_write_it(tmp_path):
    from alignment.config import ModelConfig

    missing = tmp_path / "cache" / "SmolLM2-135M-Instruct"
    with pytest.raises(
        ConfigError, match=r"does not exist; it is written once by: .*python scripts/prepare_smollm2.py"
    ):
        ModelConfig(name_or_path=str(missing))
