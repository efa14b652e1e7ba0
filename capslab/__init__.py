"""capslab: a plugin-extensible research toolkit for capsule-network routing.

The public API that plugins use is what this module exports.
"""

from importlib.metadata import PackageNotFoundError, version

from capslab.build import build, build_dataset, build_loss, build_model, build_routing, build_squash
from capslab.data import (
    DataInfo,
    Dataset,
    DatasetParams,
    IDXDataset,
    IDXFile,
    IDXParams,
    Split,
    cache_dir,
    fetch,
    load_idx_split,
    random_shift,
    read_idx,
    write_idx,
)
from capslab.errors import CapslabError, CheckpointError, DataError, PluginError, UnknownNameError
from capslab.layers import ClassCapsules, Conv2d, MaskedDecoder, PrimaryCapsules, compute_votes
from capslab.loggers import Logger, LoggerParams
from capslab.losses import Loss, ReconstructionParams, multi_hot, reconstruction_loss
from capslab.models import BuildContext, Model, ModelOutput
from capslab.params import Component, Params, PositiveInt
from capslab.plugin import impl, registry
from capslab.routing import (
    AggregationParams,
    AgreementParams,
    AgreementRouting,
    ConvWindows,
    MissingRoutingInput,
    Routing,
    RoutingResult,
    RoutingSpec,
    RoutingTrace,
    VoteMoments,
    coupling_entropy,
    stack_stats,
)
from capslab.squash import Squash, SquashParams, safe_norm

hookimpl = impl  # plugins write @capslab.hookimpl

try:
    __version__ = version("capslab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AggregationParams",
    "AgreementParams",
    "AgreementRouting",
    "BuildContext",
    "CapslabError",
    "ConvWindows",
    "CheckpointError",
    "ClassCapsules",
    "Component",
    "DataError",
    "DataInfo",
    "Dataset",
    "DatasetParams",
    "Logger",
    "LoggerParams",
    "Loss",
    "MaskedDecoder",
    "Model",
    "ModelOutput",
    "Params",
    "PositiveInt",
    "PluginError",
    "MissingRoutingInput",
    "PrimaryCapsules",
    "Conv2d",
    "ReconstructionParams",
    "Routing",
    "RoutingResult",
    "RoutingSpec",
    "RoutingTrace",
    "Split",
    "Squash",
    "SquashParams",
    "UnknownNameError",
    "VoteMoments",
    "build",
    "build_dataset",
    "build_loss",
    "build_model",
    "build_routing",
    "build_squash",
    "compute_votes",
    "coupling_entropy",
    "hookimpl",
    "impl",
    "multi_hot",
    "reconstruction_loss",
    "registry",
    "safe_norm",
    "stack_stats",
    "IDXDataset",
    "IDXFile",
    "IDXParams",
    "cache_dir",
    "fetch",
    "load_idx_split",
    "random_shift",
    "read_idx",
    "write_idx",
]
