"""Progressive training: the loop (`loop`) and its collaborators: schedule, compiled steps and their forward tensors,
optimisers, checkpoints, held-out error, sample grids and logs."""
