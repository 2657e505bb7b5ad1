"""The torch-free runtime layer: the environment, stop-signal flags, the SLURM CLI, errors, files
and the run directory's names (tests/test_layout.py imports every module here without torch)."""
