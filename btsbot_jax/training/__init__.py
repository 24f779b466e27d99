"""Training: the jit-compiled, sharded, resumable loop, its callbacks (plateau, early stopping) and checkpoints."""
