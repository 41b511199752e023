"""Preference data: rows -> PreferenceExample -> tokenized lists -> tensor batch."""

from alignment.data.adapters import adapt_row, detect_layout
from alignment.data.collator import PreferenceCollator, PromptCollator
from alignment.data.example import BadRowError, DataError, PreferenceExample
from alignment.data.pipeline import DataReport, PreparedData, SourceReport, build_datasets
from alignment.data.sources import load_source
from alignment.data.tokenize import tokenize_example

__all__ = [
    "BadRowError",
    "DataError",
    "DataReport",
    "PreferenceCollator",
    "PromptCollator",
    "PreferenceExample",
    "PreparedData",
    "SourceReport",
    "adapt_row",
    "build_datasets",
    "detect_layout",
    "load_source",
    "tokenize_example",
]
