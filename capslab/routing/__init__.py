from capslab.routing.agreement import AggregationParams, AgreementParams, AgreementRouting
from capslab.routing.base import Routing, RoutingResult, RoutingSpec, coupling_entropy, stack_stats

__all__ = [
    "AggregationParams", "AgreementParams", "AgreementRouting", "Routing", "RoutingResult", "RoutingSpec",
    "coupling_entropy", "stack_stats",
]
