"""TensorFlow: the tf.data pipeline, augmentation and views, model builders, training, features, SimCLR, encoders, thresholds."""
