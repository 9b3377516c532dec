"""Distributed training on Ray Train: the per-worker loop, the trainer builder, checkpoints."""
