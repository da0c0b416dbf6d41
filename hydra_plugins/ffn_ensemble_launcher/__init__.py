"""ffn's `hydra/launcher=ensemble`: a sweep's compatible jobs trained as one batched network."""
