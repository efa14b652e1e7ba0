"""The reconstruction decoder: FC 512 -> 1024 -> pixels, sigmoid, from the masked class capsules."""

from __future__ import annotations

from torch import Tensor, nn

from capslab.losses.base import multi_hot


class MaskedDecoder(nn.Module):
    """Reconstructs the input from the class capsules with all but the chosen class(es) zeroed.

    The mask is the label while training and the prediction at evaluation (ports that mask by the
    prediction during training learn a worse decoder); with multi-hot targets every label is kept.
    ``separate = K > 0`` (composed inputs, MultiMNIST, Sabour 2017 Sec. 6): K reconstructions, each from one
    capsule alone — the labels while training, the K most active capsules otherwise, in ascending class
    order (the order of ``Split.sources``) — returned as (B, K, C, H, W).
    """

    def __init__(
        self, num_caps: int, caps_dim: int, out_shape: tuple[int, int, int], hidden=(512, 1024), separate: int = 0
    ):
        super().__init__()
        self.out_shape = out_shape
        self.separate = separate
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

    def chosen(self, scores: Tensor, targets: Tensor | None) -> Tensor:
        """(B, K) class indices, ascending, of the capsules decoded one at a time (``separate`` = K)."""
        if self.training and targets is not None:
            hot = multi_hot(targets, scores.shape[1], scores.dtype)  # (B, J)
            chosen = hot.topk(self.separate, dim=1).indices  # the labels (each row has K ones)
        else:
            chosen = scores.topk(self.separate, dim=1).indices  # the K most active capsules
        return chosen.sort(dim=1).values

    def forward(self, poses: Tensor, scores: Tensor, targets: Tensor | None = None) -> Tensor:
        if self.separate:
            one_hot = multi_hot(self.chosen(scores, targets).flatten(), poses.shape[1], poses.dtype)  # (B*K, J)
            masks = one_hot.view(poses.shape[0], self.separate, -1)  # (B, K, J): one capsule each
            x = (poses.unsqueeze(1) * masks.unsqueeze(-1)).flatten(2)  # (B, K, J * D)
            return self.net(x).view(poses.shape[0], self.separate, *self.out_shape)
        m = self.mask(poses, scores, targets)  # (B, J)
        x = (poses * m.unsqueeze(-1)).flatten(1)  # (B, J * D)
        return self.net(x).view(-1, *self.out_shape)
