"""Progressive training: schedule, compiled steps, optimiser, checkpoints, logs and samples."""
