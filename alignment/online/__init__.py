"""Online preference optimisation: sampling, the tabular theory, and built-in judges."""
