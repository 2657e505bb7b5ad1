"""burn-suite: label-free pretraining of binary networks (BURN) on SLURM."""
