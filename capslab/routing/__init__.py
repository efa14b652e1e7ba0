from capslab.routing.base import Routing, RoutingResult, RoutingSpec, coupling_entropy, stack_stats

__all__ = ["Routing", "RoutingResult", "RoutingSpec", "coupling_entropy", "stack_stats"]
