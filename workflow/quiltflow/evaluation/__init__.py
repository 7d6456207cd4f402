"""Trained models at work: evaluation, metrics, pooling of runs, prediction on new images, Grad-CAM galleries."""
