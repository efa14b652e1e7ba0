"""``matrix_capsnet``: the matrix-capsule network of Hinton, Sabour, Frosst 2018 (Sec. 3, Fig. 1).

ReLU Conv1 (5x5, A channels, stride 2) -> PrimaryCaps (1x1 conv, B types, each a 4x4 pose and a logistic
activation) -> ConvCaps1 (3x3, stride 2, C types) -> ConvCaps2 (3x3, stride 1, D types) -> Class capsules
(one 4x4 W per input type, shared over positions, with coordinate addition). Every capsule layer is routed
by the recipe's routing (``em`` in the paper). A = B = C = D = 32 in the paper (about 310K parameters);
``channels``/``types`` or the ``width`` multiplier scale it down for a CPU.

Votes of a capsule layer are V_ij = M_i W_ij (4x4 products, flattened to 16). A conv-capsule layer unfolds
the K x K x types_in input capsules under each output position (one W per kernel position, input type and
output type, shared across positions) and folds the positions into the batch, so routing runs
independently at each position: (B * H' * W', K * K * types_in, types_out, 16). The layer tells its routing
which windowed input is which real input capsule (capslab.ConvWindows in the RoutingSpec), so a routing can
normalise an input's assignments over every window it falls in, as the official EM code does (``em``'s
``assignment: input``, its ``official`` preset).
Coordinate addition: the scaled (row, column) of the centre of each input capsule's position, in [0, 1],
is added to the first two entries of the right-hand column of its vote matrix (flat entries 3 and 7).
"""

import torch
from pydantic import Field
from torch import Tensor, nn

import capslab


class MatrixCapsNetParams(capslab.Params):
    channels: int = Field(32, ge=1)  # A
    types: list[capslab.PositiveInt] = [32, 32, 32]  # B (primary), C (conv caps 1), D (conv caps 2)
    width: float = Field(1.0, gt=0)  # multiplies channels and types (rounded, at least 1)
    conv_kernel: int = Field(5, ge=1)
    conv_stride: int = Field(2, ge=1)
    caps_kernels: list[capslab.PositiveInt] = [3, 3]
    caps_strides: list[capslab.PositiveInt] = [2, 1]
    coordinate_addition: bool = True
    weight_init_std: float = Field(0.5, gt=0)  # std of each W entry: var(V) = 4 var(M) var(W) ~ var(M)


def scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


def matmul4(poses: Tensor, weight: Tensor) -> Tensor:
    """poses (N, I, 4, 4), weight (I, J, 4, 4) -> votes viewed as (N, I, J, 16), stored as (N, J, I, 16).

    One contraction over the shared input index, so W is never copied per example; the output-major storage
    makes the routing's per-output sums batched matmuls without copies (as capslab.compute_votes).
    """
    votes = torch.einsum("nipq,ijqr->njipr", poses, weight)  # (N, J, I, 4, 4)
    return votes.reshape(*votes.shape[:3], 16).transpose(1, 2)  # (N, I, J, 16) view


class ConvCapsules(nn.Module):
    """K x K conv capsules: pose map (B, T_in * 16, H, W), activations (B, T_in, H, W) -> same at (H', W')."""

    def __init__(
        self,
        types_in: int,
        types_out: int,
        kernel: int,
        stride: int,
        in_size: tuple[int, int],
        make_routing,
        init_std: float,
    ):
        super().__init__()
        self.types_in, self.types_out, self.kernel, self.stride = types_in, types_out, kernel, stride
        in_caps = kernel * kernel * types_in
        # (I, J, 4, 4) with I = types_in * K * K (input type major, then kernel position)
        self.weight = nn.Parameter(torch.randn(in_caps, types_out, 4, 4) * init_std)
        windows = capslab.ConvWindows.grid(types_in, *in_size, kernel, stride)
        self.routing = make_routing(capslab.RoutingSpec(in_caps, types_out, 16, 16, layer="hidden", windows=windows))

    def forward(self, pose: Tensor, act: Tensor, diagnostics: bool = False):
        B, _, H, W = pose.shape
        k, s, T = self.kernel, self.stride, self.types_in
        Ho, Wo = (H - k) // s + 1, (W - k) // s + 1
        L = Ho * Wo
        # strided views of the K x K windows (Tensor.unfold: no im2col, which is slow on a busy CPU)
        win = pose.unfold(2, k, s).unfold(3, k, s)  # (B, T * 16, H', W', K, K)
        M = win.reshape(B, T, 16, L, k * k).permute(0, 3, 1, 4, 2).reshape(B * L, T * k * k, 4, 4)  # (B*L, I, 4, 4)
        a = act.unfold(2, k, s).unfold(3, k, s).reshape(B, T, L, k * k)  # (B, T, L, K * K)
        a = a.transpose(1, 2).reshape(B * L, T * k * k)  # (B*L, I), I = t * K * K + kernel position
        votes = matmul4(M, self.weight)  # (B*L, I, J, 16)
        r = self.routing(votes, a, M.flatten(2), diagnostics=diagnostics)
        out_pose = r.poses.view(B, Ho, Wo, -1).permute(0, 3, 1, 2).contiguous()  # (B, J * 16, H', W')
        out_act = r.activations.view(B, Ho, Wo, -1).permute(0, 3, 1, 2).contiguous()  # (B, J, H', W')
        return out_pose, out_act


class MatrixCapsNet(capslab.Model):
    name = "matrix_capsnet"
    Params = MatrixCapsNetParams

    def __init__(self, ctx: capslab.BuildContext, **params):
        super().__init__(ctx, **params)
        p, info = self.params, ctx.info
        if len(p.types) != 3 or len(p.caps_kernels) != 2 or len(p.caps_strides) != 2:
            raise capslab.CapslabError(
                "matrix_capsnet: model.types needs 3 entries (primary, conv caps 1, conv caps 2) and "
                "model.caps_kernels / model.caps_strides 2 each"
            )
        A = scaled(p.channels, p.width)
        Bt, C, D = (scaled(t, p.width) for t in p.types)
        self.conv1 = nn.Conv2d(info.channels, A, p.conv_kernel, p.conv_stride)
        self.primary = nn.Conv2d(A, Bt * 17, 1)  # B types x (16 pose + 1 activation logit)
        self.primary_types = Bt
        h, w = (info.height - p.conv_kernel) // p.conv_stride + 1, (info.width - p.conv_kernel) // p.conv_stride + 1
        self.conv_caps = nn.ModuleList()
        for t_in, t_out, k, s in zip((Bt, C), (C, D), p.caps_kernels, p.caps_strides):
            if h < k or w < k:
                raise capslab.CapslabError(
                    f"matrix_capsnet: a {info.height}x{info.width} input is too small for its kernels"
                )
            self.conv_caps.append(ConvCapsules(t_in, t_out, k, s, (h, w), ctx.make_routing, p.weight_init_std))
            h, w = (h - k) // s + 1, (w - k) // s + 1
        self.grid = (h, w)
        J = info.num_classes
        self.class_weight = nn.Parameter(torch.randn(D, J, 4, 4) * p.weight_init_std)  # (types_D, J, 4, 4)
        self.class_routing = ctx.make_routing(capslab.RoutingSpec(D * h * w, J, 16, 16))
        # centre of each position, scaled to [0, 1], added to vote entries (0, 3) and (1, 3)
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        coords = torch.zeros(h, w, 16)
        coords[..., 3], coords[..., 7] = ys[:, None].expand(h, w), xs[None, :].expand(h, w)
        self.register_buffer("coords", coords, persistent=False)  # (H, W, 16)

    def class_votes(self, pose: Tensor) -> tuple[Tensor, Tensor]:
        """pose map (B, D * 16, H, W) -> votes (B, D * H * W, J, 16) and poses (B, D * H * W, 4, 4)."""
        B, _, H, W = pose.shape
        D = self.class_weight.shape[0]
        M = pose.view(B, D, 4, 4, H, W).permute(0, 1, 4, 5, 2, 3)  # (B, D, H, W, 4, 4)
        votes = torch.einsum("bthwpq,tjqr->bjthwpr", M, self.class_weight).flatten(-2)  # (B, J, D, H, W, 16)
        if self.params.coordinate_addition:
            votes = votes + self.coords  # (H, W, 16) broadcast over (B, J, D)
        return votes.flatten(2, 4).transpose(1, 2), M.flatten(1, 3)  # (B, I, J, 16) view of (B, J, I, 16)

    def forward(self, images: Tensor, targets: Tensor | None = None, *, diagnostics: bool = False):
        x = self.conv1(images).relu_()  # (B, A, H, W)
        prim = self.primary(x)  # (B, B_types * 17, H, W)
        T = self.primary_types
        pose, act = prim[:, : T * 16], prim[:, T * 16 :].sigmoid()  # (B, T * 16, H, W), (B, T, H, W)
        for layer in self.conv_caps:
            pose, act = layer(pose, act)
        votes, M = self.class_votes(pose)  # (B, I, J, 16), (B, I, 4, 4)
        r = self.class_routing(votes, act.flatten(1), M.flatten(2), diagnostics=diagnostics)
        return capslab.ModelOutput(r.activations, r.poses, None, r)


@capslab.hookimpl
def register_models(register):
    register(MatrixCapsNet)
