"""Judges trained here: scalar reward models, pairwise preference models and VPL
(a reward conditioned on a user's latent). The loss's `model_head` picks one; each
trained model loads back as an online or evaluation judge."""
