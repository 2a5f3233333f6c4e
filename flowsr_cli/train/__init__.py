"""Training: data (seeded crops), recipes, the training loop, objectives for the flow and the prior,
checkpoints, DDP."""
