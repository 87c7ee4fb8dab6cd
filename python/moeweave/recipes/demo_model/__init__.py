"""The bundled demo MoE model: offline corpus, BPE tokenizer, training, evaluation, and random-weight benchmark checkpoints."""
