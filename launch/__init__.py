"""burn-suite's front doors: burn-submit (launch/submit.py), burn-run (launch/run.py) and burn-status
(launch/status.py), and what a SLURM stage job runs (launch/job_entry.py, launch/task.py)."""
