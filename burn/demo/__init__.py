"""The embedded default's inputs: generated data (synthetic.py) and the auto teacher (auto_teacher.py;
its label-free objective in contrastive.py, its report in words in teacher_report.py).
The engine never imports this package: the entry points prepare these inputs (inputs.py) before a stage
is validated or queued, and write the teacher's path into its config."""
