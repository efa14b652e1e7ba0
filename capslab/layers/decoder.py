"""The reconstruction decoder: FC 512 -> 1024 -> pixels, sigmoid, from the masked class capsules."""

from __future__ import annotations

from torch import Tensor, nn

from capslab.losses.base import multi_hot


class MaskedDecoder(nn.Module):
    """Reconstructs the input from the class capsules with all but the chosen class(es) zeroed.

    The mask is the label while training and the prediction at evaluation (ports that mask by the
    prediction during training learn a worse decoder); with multi-hot targets each label is decoded.
    """

    def __init__(self, num_caps: int, caps_dim: int, out_shape: tuple[int, int, int], hidden=(512, 1024)):
        super().__init__()
        self.out_shape = out_shape
        c, h, w = out_shape
        sizes = [num_caps * caps_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers += [nn.Linear(sizes[-1], c * h * w), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def mask(self, poses: Tensor, scores: Tensor, targets: Tensor | None) -> Tensor:
        """(B, J) 0/1 mask: the label in training, the highest score otherwise."""
        if self.training and targets is not None:
            return multi_hot(targets, poses.shape[1], poses.dtype)
        return multi_hot(scores.argmax(1), poses.shape[1], poses.dtype)

    def forward(self, poses: Tensor, scores: Tensor, targets: Tensor | None = None) -> Tensor:
        m = self.mask(poses, scores, targets)  # (B, J)
        x = (poses * m.unsqueeze(-1)).flatten(1)  # (B, J * D)
        return self.net(x).view(-1, *self.out_shape)
