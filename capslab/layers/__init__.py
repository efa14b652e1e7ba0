from capslab.layers.class_caps import ClassCapsules, compute_votes
from capslab.layers.conv import Conv2d
from capslab.layers.decoder import MaskedDecoder
from capslab.layers.primary import PrimaryCapsules

__all__ = ["ClassCapsules", "Conv2d", "MaskedDecoder", "PrimaryCapsules", "compute_votes"]
