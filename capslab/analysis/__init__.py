"""The paper's analyses of trained checkpoints: dimension perturbations, routing per iteration, image grids."""

from capslab.analysis.figures import ANALYSES, FiguresReport, make_figures
from capslab.analysis.grid import image_grid, save_image
from capslab.analysis.perturb import decoder_of, perturb_dimensions, perturbation_values, pick_digits
from capslab.analysis.routing import iteration_sweep, routing_iterations, training_history

__all__ = [
    "ANALYSES",
    "FiguresReport",
    "decoder_of",
    "image_grid",
    "iteration_sweep",
    "make_figures",
    "perturb_dimensions",
    "perturbation_values",
    "pick_digits",
    "routing_iterations",
    "save_image",
    "training_history",
]
