from capslab.layers.class_caps import ClassCapsules, compute_votes
from capslab.layers.decoder import MaskedDecoder
from capslab.layers.primary import PrimaryCapsules

__all__ = ["ClassCapsules", "MaskedDecoder", "PrimaryCapsules", "compute_votes"]
