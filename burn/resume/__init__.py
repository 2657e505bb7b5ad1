"""What makes a stage survive an interruption: checkpoints, background saves, the run lock,
identity checks, elastic resume and stop signals."""
