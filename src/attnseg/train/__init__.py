"""Training: losses, schedules, the training loop, checkpoints and distributed training."""
