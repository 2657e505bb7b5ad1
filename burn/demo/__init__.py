"""The embedded default's inputs: generated data and the auto teacher. The engine never imports
this package: the entry points prepare these inputs before a stage is validated or queued."""
