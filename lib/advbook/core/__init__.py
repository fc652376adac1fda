"""Layer 0: cache, checkpoints, seeds and devices, tensor helpers, paths. Imports nothing of advbook."""
