"""CapsNet as the paper builds it, and the bugs public ports have, each ruled out."""

import pytest
import torch

import capslab

MNIST = capslab.DataInfo(1, 28, 28, 10)


def test_parameter_counts_match_the_paper():
    model = capslab.build_model("capsnet", MNIST)
    assert model.caps.in_caps == 1152
    assert round(model.num_parameters() / 1e6, 1) == 8.2
    assert round(model.num_parameters(include_decoder=False) / 1e6, 1) == 6.8
    assert round(capslab.build_model("baseline_cnn", MNIST).num_parameters() / 1e6, 1) == 35.4


@pytest.mark.parametrize("info", [capslab.DataInfo(1, 40, 40, 10), capslab.DataInfo(3, 32, 32, 10)])
def test_other_input_sizes(info):
    model = capslab.build_model({"name": "capsnet", "conv_channels": 8, "primary_types": 2}, info)
    out = model(torch.rand(2, *info.shape), torch.tensor([0, 1]))
    assert out.scores.shape == (2, 10) and out.reconstruction.shape == (2, *info.shape)


def test_primary_capsule_is_the_channels_of_one_type_at_one_position():
    prim = capslab.PrimaryCapsules(4, types=3, dim=2, kernel_size=1, stride=1)
    T, D, H, W = 3, 2, 2, 2
    conv = torch.zeros(1, T * D, H, W)
    for t in range(T):
        for d in range(D):
            for y in range(H):
                for x in range(W):
                    conv[0, t * D + d, y, x] = 1000 * t + 100 * d + 10 * y + x
    u = prim.capsules(conv)  # (1, T*H*W, D), unsquashed (no squash given)
    assert u.shape == (1, T * H * W, D)
    for t in range(T):
        for y in range(H):
            for x in range(W):
                i = t * H * W + y * W + x
                assert u[0, i].tolist() == [1000 * t + 100 * d + 10 * y + x for d in range(D)]


def test_votes_use_a_separate_w_per_input_and_output_pair():
    u = torch.randn(2, 5, 3)
    weight = torch.randn(4, 5, 3, 6)  # (J, I, K, D)
    votes = capslab.compute_votes(u, weight)  # (B, I, J, D)
    expected = torch.stack(
        [torch.stack([torch.stack([u[b, i] @ weight[j, i] for j in range(4)]) for i in range(5)]) for b in range(2)]
    )
    torch.testing.assert_close(votes, expected)


def test_decoder_is_masked_by_the_label_in_training_and_the_prediction_in_eval():
    dec = capslab.MaskedDecoder(3, 2, (1, 2, 2), hidden=(4,))
    poses, scores, label = torch.randn(1, 3, 2), torch.tensor([[0.1, 0.9, 0.2]]), torch.tensor([2])
    seen = []
    dec.net[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].view(3, 2).abs().sum(1) > 0))
    dec.train()(poses, scores, label)
    dec.eval()(poses, scores, label)
    assert seen[0].tolist() == [False, False, True]  # training: the label (2)
    assert seen[1].tolist() == [False, True, False]  # evaluation: the prediction (1)


def test_sabour_squash_formula_and_zero():
    sq = capslab.build_squash("sabour")
    s = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(sq(s), s * (25 / 26) / 5, atol=1e-6, rtol=1e-5)
    z = torch.zeros(1, 4, requires_grad=True)
    sq(z).sum().backward()
    assert torch.isfinite(z.grad).all() and sq(z).abs().sum() == 0


def test_margin_loss_formula():
    loss = capslab.build_loss("margin")
    v = torch.tensor([[0.95, 0.5, 0.05], [0.2, 0.3, 0.7]])
    y = torch.tensor([1, 2])
    l0 = (0.9 - 0.5) ** 2 + 0.5 * (0.95 - 0.1) ** 2
    l1 = (0.9 - 0.7) ** 2 + 0.5 * ((0.2 - 0.1) ** 2 + (0.3 - 0.1) ** 2)
    torch.testing.assert_close(loss(v, y), torch.tensor((l0 + l1) / 2))
    mean_loss = capslab.build_loss({"name": "margin", "class_reduction": "mean"})
    torch.testing.assert_close(mean_loss(v, y), torch.tensor((l0 + l1) / 6))


def test_reconstruction_loss_is_weighted_sum_of_squared_pixel_errors():
    recon, img = torch.full((2, 1, 28, 28), 0.5), torch.zeros(2, 1, 28, 28)
    torch.testing.assert_close(capslab.reconstruction_loss(recon, img), torch.tensor(0.0005 * 784 * 0.25))
    torch.testing.assert_close(capslab.reconstruction_loss(recon, img, 1.0, "mean"), torch.tensor(0.25))


def test_forward_backward_at_batch_128_on_cpu():
    torch.manual_seed(0)
    model = capslab.build_model("capsnet", MNIST)
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    out = model(x, y)
    loss = capslab.build_loss("margin")(out.scores, y) + capslab.reconstruction_loss(out.reconstruction, x)
    loss.backward()
    assert torch.isfinite(loss) and out.scores.shape == (128, 10)
    assert model.conv1.weight.grad.abs().sum() > 0 and model.caps.weight.grad.abs().sum() > 0
