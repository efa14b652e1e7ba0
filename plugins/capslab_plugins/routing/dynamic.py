"""``dynamic``: routing by agreement (Sabour, Frosst, Hinton 2017, Procedure 1).

    b_ij = 0 (per example)
    repeat r times:
        c_i = softmax_j(b_i)                 coupling of input i, sums to 1 over the outputs
        s_j = sum_i c_ij u_hat_{j|i} (+ bias_j)
        v_j = squash(s_j)
        b_ij += u_hat_{j|i} . v_j

Hidden constants of the official code (Sarasra/models research/capsules layers.py), as options:
``bias`` (a learned bias added to s_j, initialised to 0.1), ``leaky`` (softmax over [0 | b], the
zero column dropped: a "none of the above" sink), ``gradient`` ("all": gradients flow through every
iteration, as the official code; "detach_inner": the votes are detached in all but the last
iteration, as several PyTorch ports do). The loop is :class:`capslab.AgreementRouting`'s; this
plugin supplies the (leaky) softmax coupling.
"""

import torch
from torch import Tensor

import capslab
from capslab.routing import backends


class DynamicParams(capslab.AgreementParams):
    leaky: bool = False


def coupling_softmax(b: Tensor, leaky: bool, dim: int) -> Tensor:
    """softmax over the outputs; leaky: over [0 | b] with the zero (sink) column dropped."""
    if not leaky:
        return b.softmax(dim)
    zero = torch.zeros_like(b.narrow(dim, 0, 1))
    return torch.cat([zero, b], dim).softmax(dim).narrow(dim, 1, b.shape[dim])


# the compiled CPU kernel has both couplings built in (capslab.routing.backends)
@backends.compiled_coupling(lambda routing: "leaky_softmax" if routing.params.leaky else "softmax")
class DynamicRouting(capslab.AgreementRouting):
    name = "dynamic"
    Params = DynamicParams

    def couple(self, b: Tensor) -> Tensor:
        return coupling_softmax(b, self.params.leaky, dim=1)  # b (B, J, I): over the outputs


@capslab.hookimpl
def register_routings(register):
    register(DynamicRouting)
