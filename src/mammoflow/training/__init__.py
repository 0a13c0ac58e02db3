"""Training: one train(config) for every model, checkpoints, resume."""
