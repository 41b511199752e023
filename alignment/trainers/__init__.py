"""The trainers, on transformers.Trainer: `preference.PreferenceTrainer` (offline),
`online.OnlineTrainer` (samples and judges each step) and `reward.RewardModelTrainer` (a
judge's model), with what they share: the arguments and the `training:` section's checks
(`arguments`), the loss inputs' providers (`inputs`), faults, checkpoints, memory, the
output directory and the nodes. Import each from its module: this package imports none
of them, so that loading a recipe (which checks the training values) stays light."""
