"""Online pieces below the trainer: samplers, judges and their feedback, and evaluation by generation (the online trainer is `alignment.trainers.online`)."""
