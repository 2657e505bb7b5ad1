"""The training loop: the stage runner, the loop and its trainers, what they checkpoint by name, schedules,
precision, the process group and the CUDA settings (checkpoint files: burn/resume; reporting: burn/monitor)."""
