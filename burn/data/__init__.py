"""Dataset lists, DALI and torchvision pipelines, generated data, pre-flight scan."""
