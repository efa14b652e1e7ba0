"""The routing contract that every routing algorithm implements.

A capsule layer computes votes ``u_hat (B, I, J, D)`` (input capsule i's prediction for output capsule
j) and hands them to a :class:`Routing`, which returns output poses ``(B, J, D)`` and activations
``(B, J)``; with ``diagnostics=True`` it also returns the final coupling coefficients ``(B, I, J)`` and,
per iteration, the mean |change of the routing logits| and the mean coupling entropy.

How the algorithms map onto the contract:

- Dynamic routing (Sabour 2017): votes only; activations = |v_j| (squash lengths); the logits b are
  the agreement sums; iterations = r.
- EM routing (Hinton 2018): D = 16 is a flattened 4x4 pose matrix; input ``activations (B, I)`` are
  required; output poses = the Gaussian means mu_j, activations = the logistic a_j; coupling = R_ij;
  the logit analogue is log R.
- Self-attention routing (Mazzia 2021): one pass (``iterations`` ignored); coupling from the
  self-attention of each output's votes plus a learned log-prior ``(I, J)``; activations = squash
  lengths.
- Inverted dot-product attention (Tsai 2020): the first pass uses uniform coupling; poses are
  LayerNorm'd; activations = pose norms (or a learned read-out), logits = the scaled dot products.
- Self-routing (Hahn 2019): needs input ``poses (B, I, D_in)`` and ``activations (B, I)``; the coupling
  comes from a per-capsule routing network on the input pose, no iterations.
- Variational Bayes (Ribeiro 2020): needs input ``activations (B, I)``, like EM.

A routing that declares ``needs_activations`` / ``needs_poses`` and is called without them raises
:class:`MissingRoutingInput` naming the routing and the model: a missing input is never replaced by a
constant (ones would give every output the same mass and ignore the input capsules' lengths).

Votes may arrive as a non-contiguous view: :class:`capslab.layers.ClassCapsules` stores them as
``(B, J, I, D)`` so that ``votes.transpose(1, 2)`` is free and the per-output sums are batched matmuls,
or in the storage a fast path of :class:`capslab.AgreementRouting` reads (capslab.routing.backends
chooses, :class:`capslab.routing.backends.VotesLayout` lists them). A plugin sees none of this: it
implements ``route`` (and an agreement routing ``couple``), nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor, nn

from capslab.errors import CapslabError
from capslab.params import Component

if TYPE_CHECKING:
    from capslab.routing.windows import ConvWindows


@dataclass(frozen=True)
class RoutingSpec:
    """The shape a routing instance is built for."""

    in_caps: int  # I
    out_caps: int  # J
    pose_dim: int  # D, the vote / output pose size
    in_pose_dim: int | None = None  # D_in, input pose size (self-routing needs it)
    layer: Literal["class", "hidden"] = "class"  # the class capsules (the model's last layer) or a capsule layer below
    # a conv-capsule layer that folds its windows into the batch says which windowed input is which real input
    # capsule (capslab.routing.windows); routings that normalise over all of an input's parents read it
    windows: ConvWindows | None = field(default=None, compare=False)


# Per-iteration convergence statistics a RoutingResult may carry (diagnostics only); see capslab.routing.trace.
ITERATION_STATS = ("logit_change", "entropy", "logit_change2", "coupling_change", "pose_change")


@dataclass
class RoutingResult:
    poses: Tensor  # (B, J, D)
    activations: Tensor  # (B, J), in [0, 1] for squash-based routings
    coupling: Tensor | None = None  # (B, I, J), final coupling coefficients; diagnostics only
    logit_change: Tensor | None = None  # (iterations,) mean |b^(r+1) - b^(r)| per iteration; diagnostics only
    entropy: Tensor | None = None  # (iterations,) mean coupling entropy (nats) per iteration
    # (iterations - 1,) each, from the second iteration on; they vanish once routing has converged:
    logit_change2: Tensor | None = None  # mean |(b^(r+1) - b^(r)) - (b^(r) - b^(r-1))|, the second difference
    coupling_change: Tensor | None = None  # mean |c^(r) - c^(r-1)|
    pose_change: Tensor | None = None  # mean ||v^(r) - v^(r-1)|| over the outputs

    def with_diagnostics(
        self, coupling: Tensor, logit_change: list[Tensor], entropy: list[Tensor], **convergence: list[Tensor]
    ) -> RoutingResult:
        """Attach the diagnostics: coupling (B, I, J), and per iteration the mean |change of the logits| and
        the mean coupling entropy (scalars, one each per iteration); ``convergence`` optionally holds the
        lists ``logit_change2``, ``coupling_change`` and ``pose_change`` (capslab.routing.trace fills them)."""
        unknown = set(convergence) - set(ITERATION_STATS[2:])
        if unknown:
            known = ", ".join(ITERATION_STATS[2:])
            raise TypeError(f"with_diagnostics: unknown statistics {sorted(unknown)}; known: {known}")
        self.coupling = coupling.detach()
        self.logit_change = stack_stats(logit_change)
        self.entropy = stack_stats(entropy)
        for key, values in convergence.items():
            setattr(self, key, stack_stats(values))
        return self


class Routing(Component, nn.Module):
    """Base class of routing plugins: subclass, set ``name`` and ``Params``, implement ``route``."""

    needs_activations: ClassVar[bool] = False  # True: forward requires input activations (B, I); never filled in
    needs_poses: ClassVar[bool] = False  # True: forward requires input poses (B, I, D_in)
    # What ranks an output whose votes agree first at initialisation (the conformance suite's agreement check):
    # "activations" (the output activations), "coupling" (only the total coupling sum_i c_ij: the activations
    # come from a learned read-out), None (the coupling does not come from agreement: uniform, random, self-routing).
    ranks_by: ClassVar[str | None] = "activations"
    stochastic: ClassVar[bool] = False  # True: draws random numbers, so batch-mates change an example's draw

    def __init__(self, spec: RoutingSpec, squash: nn.Module | None = None, **params):
        nn.Module.__init__(self)
        self.spec = spec
        self.params = self.validate_params(params)
        if squash is None:
            from capslab.squash import default_squash

            squash = default_squash()
        self.squash = squash

    @property
    def iterations(self) -> int:
        return int(getattr(self.params, "iterations", 1))

    def forward(
        self,
        votes: Tensor,  # (B, I, J, D)
        activations: Tensor | None = None,  # (B, I)
        poses: Tensor | None = None,  # (B, I, D_in)
        *,
        iterations: int | None = None,
        diagnostics: bool = False,
    ) -> RoutingResult:
        B, I, J, D = votes.shape
        s = self.spec
        if (I, J, D) != (s.in_caps, s.out_caps, s.pose_dim):
            raise ValueError(
                f"{self.name}: votes {tuple(votes.shape)} do not match (B, {s.in_caps}, {s.out_caps}, {s.pose_dim})"
            )
        for needed, given, what in (
            (self.needs_activations, activations, "activations (B, I)"),
            (self.needs_poses, poses, "poses (B, I, D_in)"),
        ):
            if needed and given is None:
                raise MissingRoutingInput(self, what)
        return self._checked(self.route(votes, activations, poses, iterations or self.iterations, diagnostics), B)

    def _checked(self, result: RoutingResult, batch: int) -> RoutingResult:
        """``result`` if its poses are (B, J, D) and its activations (B, J); else one error naming the routing
        (a transposed result would otherwise train silently, or fail deep inside a loss)."""
        s = self.spec
        for what, t, want in (
            ("poses", result.poses, (batch, s.out_caps, s.pose_dim)),
            ("activations", result.activations, (batch, s.out_caps)),
        ):
            if tuple(t.shape) != want:
                raise CapslabError(
                    f"routing {self.name!r} returned {what} of shape {tuple(t.shape)}; the contract "
                    f"is {want} (B, J{', D' if what == 'poses' else ''}): see capslab.RoutingResult"
                )
        return result

    def route(
        self, votes: Tensor, activations: Tensor | None, poses: Tensor | None, iterations: int, diagnostics: bool
    ) -> RoutingResult:
        """The routing algorithm: what a plugin implements.

        - ``votes`` (B, I, J, D): u_hat_{j|i}, possibly a non-contiguous view (module doc).
        - ``activations`` (B, I) in [0, 1] and ``poses`` (B, I, D_in): the input capsules' activations and
          poses, as the model has them; never None when the class declares ``needs_activations`` /
          ``needs_poses`` (``forward`` raises before calling ``route``), otherwise possibly None.
        - ``iterations``: the recipe's ``routing.iterations`` (or ``forward``'s override); ignore it for
          one-pass routings.
        - ``diagnostics``: when True, attach the final coupling (B, I, J) and per-iteration statistics, most
          simply by feeding :class:`capslab.RoutingTrace` once per iteration and calling its
          ``attach``, or with :meth:`RoutingResult.with_diagnostics`.

        Return poses (B, J, D) and activations (B, J) (``forward`` checks the shapes). Learned parameters are
        ordinary ``nn.Parameter`` attributes created in ``__init__`` from ``self.spec`` (I, J, D, D_in) and
        ``self.params``; they train and checkpoint with the model. ``capslab.testing`` lists what the
        conformance suite checks of every routing."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())


class MissingRoutingInput(CapslabError):
    """A routing that needs input activations or poses was called without them (never filled with a constant)."""

    def __init__(self, routing: Routing, what: str):
        caller = getattr(routing, "_caller", None)
        by = f"model {caller!r}" if caller else "its caller"
        super().__init__(
            f"routing {routing.name!r} needs the input capsules' {what}, and {by} passed none: "
            f"pass them to the routing (capslab.Routing.forward), or pick a routing that needs none"
        )


def coupling_entropy(c: Tensor, dim: int = -1) -> Tensor:
    """Mean entropy (nats) of coupling distributions along ``dim``; c need not be normalised exactly."""
    c = c.detach().float()
    p = c / c.sum(dim, keepdim=True).clamp_min(1e-12)
    return -(p * p.clamp_min(1e-12).log()).sum(dim).mean()


def stack_stats(values: list[Tensor]) -> Tensor:
    return torch.stack([v.detach().float().reshape(()) for v in values]) if values else torch.zeros(0)
