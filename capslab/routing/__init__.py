from capslab.routing.agreement import AggregationParams, AgreementParams, AgreementRouting
from capslab.routing.base import MissingRoutingInput, Routing, RoutingResult, RoutingSpec, coupling_entropy, stack_stats
from capslab.routing.moments import VoteMoments
from capslab.routing.trace import RoutingTrace
from capslab.routing.windows import ConvWindows

__all__ = [
    "AggregationParams",
    "AgreementParams",
    "AgreementRouting",
    "ConvWindows",
    "MissingRoutingInput",
    "Routing",
    "RoutingResult",
    "RoutingSpec",
    "RoutingTrace",
    "VoteMoments",
    "coupling_entropy",
    "stack_stats",
]
