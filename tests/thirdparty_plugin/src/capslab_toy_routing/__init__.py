"""``toy_attention``: one pass of agreement with the mean vote, at a learned temperature."""

import torch
from torch import nn

import capslab


class ToyParams(capslab.Params):
    temperature: float = 1.0


class ToyAttention(capslab.Routing):
    name = "toy_attention"
    Params = ToyParams

    def __init__(self, spec, squash=None, **params):
        super().__init__(spec, squash, **params)
        self.log_t = nn.Parameter(torch.tensor(float(self.params.temperature)).log())

    def route(self, votes, activations, poses, iterations, diagnostics):
        mean = votes.mean(1, keepdim=True)  # (B, 1, J, D)
        logits = (votes * mean).sum(-1) / self.log_t.exp()  # (B, I, J)
        c = logits.softmax(-1)
        v = self.squash((c.unsqueeze(-1) * votes).sum(1))  # (B, J, D)
        out = capslab.RoutingResult(v, v.norm(dim=-1))
        if diagnostics:
            out.with_diagnostics(c, [logits.abs().mean()], [capslab.coupling_entropy(c)])
        return out


@capslab.hookimpl
def register_routings(register):
    register(ToyAttention)
