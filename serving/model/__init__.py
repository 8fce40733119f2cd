"""The model layer: configuration, versions and their life cycle, batching, prediction."""
