"""Training: the sampler DataModule, the bi-encoder LightningModule, the loss, export and DDP."""
