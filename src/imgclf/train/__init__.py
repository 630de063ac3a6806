"""Training: the loop, its events, optimizers and schedules, checkpoints."""
