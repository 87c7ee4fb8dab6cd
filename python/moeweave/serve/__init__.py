"""Serving many ESFT adapters over one MoE base: a ragged batched forward, continuous batching
and an OpenAI-compatible HTTP API (moeweave serve)."""
