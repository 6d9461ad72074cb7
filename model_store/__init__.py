"""Versioned Keras models: architectures, training, the on-disk registry and safe loading."""
