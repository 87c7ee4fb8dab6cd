"""Reproducible recipes that build the models and checkpoints moeweave ships, tests and benchmarks on."""
