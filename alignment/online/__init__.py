"""Everything online: samplers, judges and their feedback, the online trainer, and evaluation by generation."""
