"""File formats moeweave reads: Hugging Face checkpoint directories (safetensors only)."""
