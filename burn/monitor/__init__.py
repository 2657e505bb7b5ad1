"""What a stage reports: console, progress.json and TensorBoard, and the collapse and k-NN monitors."""
