"""Training: state and optimiser, checkpoints, metric writers, and the fine-tuning loop."""
