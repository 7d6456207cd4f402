"""The comparison of models at the video level (no TensorFlow): test-set loading, scores, intervals, tests, reports, plots."""
