"""Which implementation runs a routing: the one place where speed paths are chosen.

A plugin implements the routing once, as readable PyTorch (``Routing.route``; for agreement routings,
``AgreementRouting.couple``): that is the **reference** path, and it is what every routing runs unless
this module picks a faster one that computes the same thing (the tests hold each to the reference):

- ``Backend.KERNEL``: compiled CPU loops (capslab.routing.kernel, numba) for the Procedure-1 loop with
  a coupling and a squash compiled in (registered below by the ``dynamic`` and ``sabour`` plugins).
- ``Backend.FUSED``: the Procedure-1 loop of any :class:`capslab.AgreementRouting` as one autograd
  function over batched operators (capslab.routing.fused), any ``couple`` and squash.
- ``Backend.REFERENCE``: the plain loop (``AgreementRouting``'s own, or the plugin's ``route``).

Gaussian-mixture routings (EM, variational Bayes) see their votes through
:class:`capslab.routing.moments.VoteMoments`, whose contractions take the same three steps
(:func:`moments_path`): compiled loops, batched products, or the formulas as they read.

The rule, :func:`choose`: with diagnostics, the reference (it records every iteration); otherwise the
fastest allowed path that applies, in the order above. The ceiling is one switch for debugging, the way
timm's ``use_fused_attn()`` is: the environment variable ``CAPSLAB_ROUTING_BACKEND`` or the recipe key
``train.routing_backend`` (``auto``, ``fused``: no compiled kernel, ``reference``: no fast path at
all), or :func:`use` in code (``with backends.use("reference"): ...``).

The votes storage that :class:`capslab.ClassCapsules` writes follows the chosen path
(:func:`votes_layout`); :class:`VotesLayout` lists the storages.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from enum import Enum

import torch
from torch import Tensor

from capslab.errors import CapslabError

ENV = "CAPSLAB_ROUTING_BACKEND"


class Backend(str, Enum):
    """A routing implementation, fastest first."""

    KERNEL = "kernel"
    FUSED = "fused"
    REFERENCE = "reference"


class VotesLayout(str, Enum):
    """How the (B, I, J, D) votes are stored in memory (a view of that shape is always what routings see)."""

    def __new__(cls, value: str, doc: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.__doc__ = doc
        return member

    BJID = (
        "bjid",
        (
            "stored (B, J, I, D): ``votes.transpose(1, 2)`` is contiguous, so per-output sums are "
            "plain batched matmuls; the default, for every routing's reference path"
        ),
    )
    IBJD = (
        "ibjd",
        (
            "stored (I, B, J, D): the votes matmul's own output (one contiguous block per input "
            "capsule); what the fused agreement loop reads"
        ),
    )
    IJDB = (
        "ijdb",
        ("stored (I, J, D, B), examples last: what the compiled CPU kernel reads, the examples being its vector lanes"),
    )


# Allowed ceiling: "auto" allows every backend; "fused" all but the kernel; "reference" none but the plain loop.
CEILINGS = {"auto": Backend.KERNEL, "fused": Backend.FUSED, "reference": Backend.REFERENCE}
_ORDER = list(Backend)
_setting: list[str] = []  # a stack: use() pushes, the innermost wins; empty -> the environment variable


def _ceiling() -> Backend:
    name = _setting[-1] if _setting else os.environ.get(ENV, "auto") or "auto"
    if name not in CEILINGS:
        raise CapslabError(f"{ENV}={name!r} is not a routing backend setting; use one of: {', '.join(CEILINGS)}")
    return CEILINGS[name]


def allowed(backend: Backend) -> bool:
    return _ORDER.index(backend) >= _ORDER.index(_ceiling())


@contextlib.contextmanager
def use(setting: str | None) -> Iterator[None]:
    """Within the block, routings take at most the given path (``auto``, ``fused``, ``reference``);
    None: leave the current setting (the environment variable's, or an enclosing ``use``'s)."""
    if setting is None:
        yield
        return
    if setting not in CEILINGS:
        raise CapslabError(f"routing backend {setting!r}: use one of {', '.join(CEILINGS)}")
    _setting.append(setting)
    try:
        yield
    finally:
        _setting.pop()


# Couplings and squashes the compiled kernel has built in, keyed by the implementing function, so that a
# subclass overriding ``couple`` / ``forward`` is never mistaken for the compiled one.
_KERNEL_COUPLINGS: dict[Callable, Callable[[object], str]] = {}
_KERNEL_SQUASHES: dict[Callable, str] = {}
KERNEL_COUPLING_NAMES = ("softmax", "leaky_softmax", "max_min")  # in the order of kernel_loops' codes


def compiled_coupling(describe: Callable[[object], str]):
    """Class decorator for an AgreementRouting whose ``couple`` the kernel has compiled in:
    ``describe(routing)`` names it for an instance: "softmax", "leaky_softmax", or "max_min" (the kernel
    reads ``routing.params.lb`` and ``ub``)."""

    def register(cls):
        _KERNEL_COUPLINGS[cls.couple] = describe
        return cls

    return register


def compiled_squash(name: str):
    """Class decorator for a Squash whose formula the kernel has compiled in (``"sabour"``)."""

    def register(cls):
        _KERNEL_SQUASHES[cls.forward] = name
        return cls

    return register


def kernel_coupling(routing) -> str | None:
    """The compiled name of ``routing``'s coupling, or None when the kernel does not have it."""
    describe = _KERNEL_COUPLINGS.get(type(routing).couple)
    name = describe(routing) if describe is not None else None
    return name if name in KERNEL_COUPLING_NAMES else None


def kernel_squash(squash) -> str | None:
    return _KERNEL_SQUASHES.get(type(squash).forward)


def moments_path(V: Tensor) -> Backend:
    """How :class:`capslab.routing.moments.VoteMoments` contracts the votes V (B, J, I, D)."""
    if not allowed(Backend.FUSED):
        return Backend.REFERENCE
    fits = _compiled_fits(V) and V.is_contiguous()
    return Backend.KERNEL if allowed(Backend.KERNEL) and fits else Backend.FUSED


def _agreement(routing) -> bool:
    from capslab.routing.agreement import AgreementRouting

    return isinstance(routing, AgreementRouting) and type(routing).route is AgreementRouting.route


def zero_start(routing) -> bool:
    """True when the routing's logits start at zero, as in Procedure 1 (``initial_logits`` not overridden)."""
    from capslab.routing.agreement import AgreementRouting

    return type(routing).initial_logits is AgreementRouting.initial_logits


def _kernel_fits(routing, x: Tensor) -> bool:
    """The compiled kernel computes ``routing``'s loop on inputs like ``x`` (votes or input poses)."""
    return (
        zero_start(routing)
        and kernel_coupling(routing) is not None
        and kernel_squash(routing.squash) == "sabour"
        and _compiled_fits(x)
    )


def _compiled_fits(x: Tensor) -> bool:
    """Compiled CPU loops (numba) can take x: float32 / float64 on the CPU, outside autocast and torch.compile."""
    from capslab.routing import kernel

    return (
        kernel.available()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def _fast(routing, x: Tensor, diagnostics: bool) -> Backend:
    """The path for ``routing`` before the votes exist (x: input poses or votes)."""
    if diagnostics or not _agreement(routing):
        return Backend.REFERENCE
    if allowed(Backend.KERNEL) and _kernel_fits(routing, x):
        return Backend.KERNEL
    return Backend.FUSED if allowed(Backend.FUSED) else Backend.REFERENCE


def votes_layout(routing, u: Tensor, diagnostics: bool = False) -> VotesLayout:
    """The storage :class:`capslab.ClassCapsules` writes the votes of input poses u (B, I, K) in."""
    return {Backend.KERNEL: VotesLayout.IJDB, Backend.FUSED: VotesLayout.IBJD, Backend.REFERENCE: VotesLayout.BJID}[
        _fast(routing, u, diagnostics)
    ]


def choose(routing, votes: Tensor, diagnostics: bool, logits: Tensor | None = None) -> Backend:
    """The path that runs ``routing`` on ``votes`` (B, I, J, D) stored as they are; ``logits``: the
    agreement routing's initial logits (a fast path needs them constant)."""
    from capslab.routing import fused, kernel

    best = _fast(routing, votes, diagnostics)
    if best is Backend.REFERENCE or (logits is not None and logits.requires_grad):
        return Backend.REFERENCE
    if best is Backend.KERNEL and kernel.stored_for_kernel(votes):
        return Backend.KERNEL
    return Backend.FUSED if allowed(Backend.FUSED) and fused.fusable(votes) else Backend.REFERENCE


def route_from_weights(routing, u: Tensor, weight: Tensor, diagnostics: bool = False):
    """ClassCapsules' fastest path: the routing of the votes W_ij u_i of input poses u (B, I, K) and
    matrices weight (J, I, K, D) without storing them (compiled kernel), or None: compute the votes."""
    if _fast(routing, u, diagnostics) is not Backend.KERNEL:
        return None
    from capslab.routing import kernel

    detach_inner = getattr(routing.params, "gradient", "all") == "detach_inner"
    return kernel.route_weights(routing, u, weight, routing.iterations, detach_inner)
