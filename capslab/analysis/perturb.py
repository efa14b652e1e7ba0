"""Dimension perturbations: what each dimension of a class capsule encodes (Sabour 2017, Sec. 5.1, Fig. 4).

For a test digit, take the pose v_k (D = 16) of one class capsule k (the predicted class, or the label),
add delta to one dimension d at a time and decode with the model's own decoder:

    v'_k = v_k + delta e_d,   delta in {-0.25, -0.20, ..., 0.25}   (11 values)

The decoder masks as at evaluation: every class capsule but k is zeroed (MaskedDecoder.mask, fed a
one-hot score for k). Row d of the figure (columns = delta) shows what dimension d does to the digit:
stroke thickness, skew, width, localised parts (the paper's Fig. 4).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from capslab.analysis.grid import image_grid
from capslab.data.base import Split
from capslab.errors import CapslabError
from capslab.layers.decoder import MaskedDecoder
from capslab.losses.base import multi_hot
from capslab.train.data import to_float


def perturbation_values(limit: float = 0.25, step: float = 0.05) -> Tensor:
    """The deltas -limit, -limit + step, ..., limit (V,); the paper's 0.25 and 0.05 give 11 values."""
    if not (limit > 0 and step > 0):
        raise CapslabError(f"--perturb-range {limit} / --perturb-step {step}: both must be > 0")
    n = round(2 * limit / step)
    if n < 1 or abs(n * step - 2 * limit) > 1e-6 * max(1.0, limit):
        raise CapslabError(f"--perturb-step {step} does not divide [-{limit}, {limit}] evenly; e.g. 0.05 for 0.25")
    return torch.linspace(-limit, limit, n + 1)


def decoder_of(model: nn.Module) -> MaskedDecoder:
    """The model's MaskedDecoder, or a one-line CapslabError naming the model and why there is none."""
    name = getattr(model, "name", type(model).__name__)
    decoder = getattr(model, "decoder", None)
    if decoder is None:
        built_without = hasattr(model, "decoder") and getattr(getattr(model, "params", None), "decoder", None) is False
        why = "it was trained with model.decoder: false" if built_without else "it has no decoder"
        raise CapslabError(f"{name}: no dimension perturbations: {why} (they decode perturbed class capsules)")
    if not isinstance(decoder, MaskedDecoder):
        raise CapslabError(
            f"{name}: no dimension perturbations: its decoder is a {type(decoder).__name__}, "
            f"not a capslab.MaskedDecoder over the class capsules"
        )
    return decoder


def pick_digits(labels: Tensor, num_classes: int, indices: list[int] | None = None) -> Tensor:
    """Test indices (n,): ``indices`` as given, else the first digit of each class present."""
    if indices:
        bad = [i for i in indices if not 0 <= i < len(labels)]
        if bad:
            raise CapslabError(f"--index {bad[0]}: out of range; the split has {len(labels)} examples")
        return torch.tensor(indices)
    first = labels.argmax(1) if labels.dim() == 2 else labels  # multi-hot: its first label
    found = [int(torch.nonzero(first == j)[0]) for j in range(num_classes) if bool((first == j).any())]
    return torch.tensor(found)


@torch.no_grad()
def perturb_dimensions(decoder: MaskedDecoder, poses: Tensor, classes: Tensor, values: Tensor) -> Tensor:
    """Class poses (n, J, D), the capsule to perturb per digit (n,), deltas (V,) -> images (n, D, V, C, H, W).

    Image [i, d, v] decodes poses[i] with poses[i, classes[i], d] + values[v], masked to classes[i].
    """
    n, J, D = poses.shape
    V = len(values)
    values = values.to(poses)
    delta = torch.eye(D, dtype=poses.dtype, device=poses.device)[:, None, :] * values[None, :, None]  # (D, V, D)
    out = []
    for i in range(n):  # one digit at a time: D * V decoder inputs
        p = poses[i].expand(D, V, J, D).clone()  # (D, V, J, D)
        p[:, :, int(classes[i])] += delta
        onehot = multi_hot(classes[i].expand(D * V), J, poses.dtype)  # (D*V, J): the mask picks class k
        out.append(decoder(p.view(D * V, J, D), onehot).view(D, V, *decoder.out_shape))
    return torch.stack(out)  # (n, D, V, C, H, W)


@torch.no_grad()
def class_poses(model: nn.Module, data: Split, index: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(poses (n, J, D), predicted classes (n,), true classes (n,)) of the chosen test digits."""
    model.eval()
    out = model(to_float(data.images[index]).to(device))
    if out.poses is None or out.poses.dim() != 3:
        name = getattr(model, "name", type(model).__name__)
        raise CapslabError(f"{name}: no dimension perturbations: its forward returns no class-capsule poses (B, J, D)")
    labels = data.labels[index]
    true = labels.argmax(1) if labels.dim() == 2 else labels
    return out.poses.float(), out.scores.float().argmax(1).cpu(), true


def save_perturbation_figure(path: Path, images: Tensor, values: Tensor, title: str, scale: int = 2) -> Path:
    """One digit's images (D, V, C, H, W) as a labelled grid: rows = dimensions, columns = deltas."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    D, V, C, H, W = images.shape
    gap = 2
    grid = image_grid(images, gap=gap)  # (D*(H+2)+2, V*(W+2)+2, C)
    fig = Figure(figsize=(1.0 + 0.45 * V, 0.8 + 0.45 * D))
    ax = fig.add_subplot()
    ax.imshow(
        grid[..., 0] if C == 1 else grid, cmap="gray" if C == 1 else None, vmin=0, vmax=1, interpolation="nearest"
    )
    labels = [f"{round(float(x), 6) + 0.0:+.2f}" for x in values]  # + 0.0: no "-0.00" in the middle
    ax.set_xticks([gap + v * (W + gap) + W / 2 for v in range(V)], labels, fontsize=7, rotation=90)
    ax.set_yticks([gap + d * (H + gap) + H / 2 for d in range(D)], [str(d) for d in range(D)], fontsize=7)
    ax.set_xlabel("perturbation added to the dimension")
    ax.set_ylabel("capsule dimension")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=60 * scale, format="png")
    tmp.replace(path)
    return path
