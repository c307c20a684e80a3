"""Training: the epoch step and the validation loss, optimiser and learning-rate schedule, EMA, the run's logs."""
