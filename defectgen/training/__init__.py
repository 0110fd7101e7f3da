"""Training (torch): GAN trainer, encoder trainer, checkpoints, DDP."""
