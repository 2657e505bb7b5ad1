"""The stage loop (loop.py) and what a stage hands it (parts.py), the two stages that build those parts
(pretraining: trainer.py; linear evaluation: linear.py), and what they share: distributed setup, GPU
settings, precision, schedules, bad-step handling and checkpointed state (checkpoint files: burn/resume;
reporting: burn/monitor)."""
