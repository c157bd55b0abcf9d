"""Prediction: the sliding window over a whole volume, and block-wise prediction of large ones."""
