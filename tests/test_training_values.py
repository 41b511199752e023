"""Every `training:` value is checked when the recipe loads, for every field of
TrainingArguments: the checks are derived from the fields, so these tests walk all of
them rather than a list of examples."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from alignment.config import ConfigError, load_config
from alignment.trainers.arguments import (
    NON_NEGATIVE,
    AlignmentTrainingArguments,
    Range,
    checked_training_values,
    choices_of,
    numeric_type,
    range_of,
)
from tests.helpers import TINY

FIELDS = {f.name: f for f in dataclasses.fields(AlignmentTrainingArguments) if f.init}
HINTS = typing.get_type_hints(AlignmentTrainingArguments)


def _default(field: dataclasses.Field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _accepts(name: str, value) -> bool:
    try:
        checked_training_values({name: value})
    except ValueError as err:
        assert f"training.{name}" in str(err)  # every refusal names its key
        return False
    return True


def test_every_default_is_accepted():
    assert len(FIELDS) > 100  # the whole of TrainingArguments, not a hand-picked few
    for name, field in FIELDS.items():
        assert _accepts(name, _default(field)), name


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_field_refuses_a_value_of_the_wrong_type(name):
    """A string where a number or a flag goes, a number where text or a mapping goes, a
    mapping where a list goes: each field refuses the ones its type rules out."""
    annotation = HINTS[name]
    members = typing.get_args(annotation) or (annotation,)
    wrong = []
    if (numeric_type(annotation) is not None or bool in members) and str not in members:
        wrong.append("abc")
    if not any(m in (int, float) for m in members):
        wrong.append(12345)  # no enum, string, mapping or list field takes a bare number
    if numeric_type(annotation) is int:
        wrong.append(2.5)
    assert wrong, name
    for value in wrong:
        assert not _accepts(name, value), (name, value)


def _outside(rule: Range) -> list[float]:
    values = [rule.low if rule.low_open else rule.low - 1, math.nan]
    if rule.high != math.inf:
        values.append(rule.high if rule.high_open else rule.high + 1)
    return values


@pytest.mark.parametrize("name", sorted(n for n in FIELDS if numeric_type(HINTS[n]) is not None))
def test_every_number_outside_its_range_is_refused(name):
    rule, sentinel = range_of(name, FIELDS[name].default)
    kind = numeric_type(HINTS[name])
    for value in _outside(rule):
        if kind is int and not (isinstance(value, float) and math.isnan(value)):
            value = int(value)
        if value == sentinel:
            continue
        assert not _accepts(name, value), (name, value)
    inside = rule.low + 1 if rule.high == math.inf else (rule.low + rule.high) / 2
    assert _accepts(name, kind(inside) if kind is int else inside), name


def test_ranges_are_the_documented_ones():
    """The rules that differ from ">= 0", worked out from what each field means."""
    expected = {
        "per_device_train_batch_size": (Range(1), None),
        "per_device_eval_batch_size": (Range(1), None),
        "gradient_accumulation_steps": (Range(1), None),
        "max_steps": (Range(1), -1),
        "logging_steps": (Range(0, low_open=True), None),
        "save_steps": (Range(0, low_open=True), None),
        "num_train_epochs": (Range(0, low_open=True), None),
        "adam_beta2": (Range(0, 1, high_open=True), None),
        "seed": (Range(0, 2**32 - 1), None),
        "local_rank": (NON_NEGATIVE, -1),
        "learning_rate": (NON_NEGATIVE, None),
    }
    for name, rule in expected.items():
        assert range_of(name, FIELDS[name].default) == rule, name


def test_choices_come_from_enums_metadata_and_our_keys():
    assert choices_of("save_strategy", FIELDS["save_strategy"], HINTS["save_strategy"]) == [
        "no",
        "steps",
        "epoch",
        "best",
    ]
    assert "gloo" in choices_of("ddp_backend", FIELDS["ddp_backend"], HINTS["ddp_backend"])  # field metadata
    assert choices_of("nonfinite_loss", FIELDS["nonfinite_loss"], HINTS["nonfinite_loss"]) == ["stop", "skip"]
    assert checked_training_values({"save_strategy": False}) == {"save_strategy": "no"}  # YAML's bare `no`
    assert checked_training_values({"memory_probe": False}) == {"memory_probe": "off"}


def test_numbers_are_passed_on_as_written():
    values = {"learning_rate": 1, "warmup_steps": 10, "logging_steps": 0.25, "max_steps": -1}
    assert checked_training_values(values) == values


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("--training.learning_rate=abc", "training.learning_rate: expected a number, got 'abc'"),
        ("--training.per_device_train_batch_size=0", "training.per_device_train_batch_size must be >= 1, got 0"),
        ("--training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps must be >= 1, got 0"),
        ("--training.logging_steps=-3", "training.logging_steps must be > 0, got -3"),
    ],
)
def test_the_reported_mistakes_fail_at_load(override, phrase):
    with pytest.raises(ConfigError, match=phrase.replace(".", r"\.").replace("(", r"\(")):
        load_config(TINY / "dpo.yaml", [override])
