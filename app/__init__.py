"""Repack a pretrained model.tar.gz with hyperparameters.json at its root, for SageMaker."""

from app.cli import main

__all__ = ["main"]
