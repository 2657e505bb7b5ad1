"""Dataset lists, the DALI and torchvision pipelines, ImageNet list preparation, the pre-flight scan."""
