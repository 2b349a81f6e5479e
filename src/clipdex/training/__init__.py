"""Training: contrastive fine-tuning on image-caption pairs, and the shipped demo model."""
