"""The network and how it is trained: encoder and head (classifier), losses, the optimizer, the
precision policy and the ``tf.distribute`` strategy."""
