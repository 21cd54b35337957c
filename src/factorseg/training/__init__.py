"""Training: Lightning module, seeded data pipeline and the ``train`` entry point."""

from factorseg.training.run import TrainResult, train

__all__ = ["TrainResult", "train"]
