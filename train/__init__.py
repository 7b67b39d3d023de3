"""Training, evaluation, checkpoints and local prediction for the image classifier."""
