"""Bridges from other libraries to moeweave's kernels."""
