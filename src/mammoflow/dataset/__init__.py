"""Dataset building: ROIs, splits, shards and the tf.data input pipeline."""
