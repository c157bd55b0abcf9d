"""Training from sparse annotations: the plan, the training data, the loop and its pieces."""
