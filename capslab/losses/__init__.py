from capslab.losses.base import Loss, multi_hot
from capslab.losses.reconstruction import ReconstructionParams, reconstruction_loss

__all__ = ["Loss", "ReconstructionParams", "multi_hot", "reconstruction_loss"]
