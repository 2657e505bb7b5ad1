"""Distributed setup, training loops, checkpoints, signals and logging."""
