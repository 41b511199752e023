"""Built-in tasks with a checkable ground truth: their data generators, judges and scores."""
