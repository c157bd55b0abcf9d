"""What is computed from a prediction: instances and uncertainty."""
