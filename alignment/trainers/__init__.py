from alignment.trainers.arguments import AlignmentTrainingArguments
from alignment.trainers.preference import PreferenceTrainer

__all__ = ["AlignmentTrainingArguments", "PreferenceTrainer"]
