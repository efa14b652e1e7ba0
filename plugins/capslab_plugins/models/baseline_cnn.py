"""``baseline_cnn``: the baseline of Sabour 2017 (Sec. 5): three 5x5 convolutions of 256, 256 and 128
channels (stride 1, 'same' padding, ReLU), FC 328 -> 192 -> classes with dropout; softmax cross-entropy
on its logits. 35.4M parameters on MNIST, as the paper states.
"""

from pydantic import Field
from torch import Tensor, nn

import capslab


class BaselineCNNParams(capslab.Params):
    channels: list[capslab.PositiveInt] = [256, 256, 128]
    kernel: int = Field(5, ge=1)
    hidden: list[capslab.PositiveInt] = [328, 192]
    dropout: float = Field(0.5, ge=0, lt=1)


class BaselineCNN(capslab.Model):
    name = "baseline_cnn"
    Params = BaselineCNNParams
    scores = "logits"

    def __init__(self, ctx: capslab.BuildContext, **params):
        super().__init__(ctx, **params)
        p, info = self.params, ctx.info
        convs: list[nn.Module] = []
        c_in = info.channels
        for c in p.channels:
            convs += [nn.Conv2d(c_in, c, p.kernel, padding=p.kernel // 2), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*convs)
        fcs: list[nn.Module] = []
        n_in = c_in * info.height * info.width
        for h in p.hidden:
            fcs += [nn.Linear(n_in, h), nn.ReLU(inplace=True), nn.Dropout(p.dropout)]
            n_in = h
        fcs.append(nn.Linear(n_in, info.num_classes))
        self.classifier = nn.Sequential(*fcs)

    def forward(self, images: Tensor, targets: Tensor | None = None, *, diagnostics: bool = False):
        return capslab.ModelOutput(self.classifier(self.features(images).flatten(1)))


@capslab.hookimpl
def register_models(register):
    register(BaselineCNN)
