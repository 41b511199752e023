"""The commands apart from training: validate, plot, merge, model card."""
