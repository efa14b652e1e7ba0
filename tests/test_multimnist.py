"""MultiMNIST built on the fly: pairing rule, shifts, merging, labels, determinism."""

import pytest
import torch
from torch.nn import functional as F

import capslab
from capslab_plugins.datasets.multimnist import MultiMNIST, compose


def dots(labels, value=100):
    """One bright pixel at (14, 14) per 28x28 'digit': where it lands shows the shift."""
    images = torch.zeros(len(labels), 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 14, 14] = value
    return images, torch.as_tensor(labels)


def test_pairs_have_different_classes_and_two_hot_labels():
    labels = torch.tensor([0] + [1] * 30 + [2] * 5)  # unbalanced: partners are uniform over other digits
    images = torch.randint(0, 256, (len(labels), 1, 28, 28), dtype=torch.uint8)
    merged, hot, first, second, _ = compose(images, labels, 3, 200, 0, 4, torch.Generator().manual_seed(0))
    assert merged.shape == (len(labels) * 200, 1, 36, 36) and merged.dtype == torch.uint8
    assert first.tolist() == torch.arange(len(labels)).repeat_interleave(200).tolist()
    assert (labels[first] != labels[second]).all()
    assert hot.dtype == torch.int64 and (hot.sum(1) == 2).all()
    assert (hot.gather(1, labels[first, None]) == 1).all() and (hot.gather(1, labels[second, None]) == 1).all()
    ones = second[labels[first] == 1]  # class-1 digits pair with the 6 digits of classes 0 and 2, uniformly
    assert set(labels[ones].tolist()) == {0, 2} and set(ones.tolist()) == {0, 31, 32, 33, 34, 35}
    assert abs((labels[ones] == 0).float().mean().item() - 1 / 6) < 0.05
    # no shift: exactly the padded digits added, saturating at 255
    expected = (F.pad(images[first], (4,) * 4).int() + F.pad(images[second], (4,) * 4).int()).clamp_max(255)
    assert torch.equal(merged, expected.to(torch.uint8))


@pytest.mark.parametrize("shift", [2, 4, 6])
def test_each_digit_is_shifted_independently_up_to_shift(shift):
    images, labels = dots([0, 1] * 50, value=200)
    merged, _, _, _, _ = compose(images, labels, 2, 20, shift, 4, torch.Generator().manual_seed(1))
    offsets = []
    for img in merged[:, 0]:
        ys, xs = torch.nonzero(img, as_tuple=True)
        vals = img[ys, xs]
        assert len(ys) in (1, 2) and ((vals == 200) | (vals == 255)).all()  # 200 + 200 saturates to 255
        assert (vals == 255).any() == (len(ys) == 1)
        offsets += list(zip((ys - 18).tolist(), (xs - 18).tolist()))
    assert {o for pair in offsets for o in pair} == set(range(-shift, shift + 1))  # every shift occurs
    assert max(abs(o) for pair in offsets for o in pair) == shift


def test_multimnist_on_mnist5k():
    ds = MultiMNIST(pairs_per_digit=2, shift=4, seed=3)
    assert ds.info == capslab.DataInfo(1, 36, 36, 10, multi_label=True, sources=2)
    test = ds.load("test")
    assert test.images.shape == (2000, 1, 36, 36) and test.labels.shape == (2000, 10)
    assert (test.labels.sum(1) == 2).all() and (test.labels.sum(0) > 300).all()
    assert test.images.dtype == torch.uint8 and int(test.images.max()) == 255
    again = MultiMNIST(pairs_per_digit=2, shift=4, seed=3).load("test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    other = MultiMNIST(pairs_per_digit=2, shift=4, seed=4).load("test")
    assert not torch.equal(other.images, test.images)
    assert len(MultiMNIST(base={"name": "mnist5k"}, pad=0, shift=0).load("train")) == 4000
    assert MultiMNIST(pad=6).info.shape == (1, 40, 40)


def test_multimnist_rejects_bad_params_and_splits():
    with pytest.raises(Exception, match="pairs_per_digit"):
        MultiMNIST(pairs_per_digit=0)
    with pytest.raises(capslab.DataError, match="no split"):
        MultiMNIST().load("valid")
    with pytest.raises(capslab.UnknownNameError, match="mnist5"):
        MultiMNIST(base="mnist6k")
    images, labels = dots([3, 3, 3])
    with pytest.raises(capslab.DataError, match="at least two classes"):
        compose(images, labels, 10, 1, 0, 4, torch.Generator())


def test_each_composite_comes_with_its_two_digits_lower_class_first():
    images, labels = torch.randint(0, 200, (40, 1, 8, 8), dtype=torch.uint8), torch.arange(40) % 4
    merged, hot, first, second, sources = compose(images, labels, 4, 3, 2, 2, torch.Generator().manual_seed(0))
    assert sources.shape == (120, 2, 1, 12, 12) and sources.dtype == torch.uint8
    sum_ = sources.to(torch.int16).sum(1).clamp_max(255).to(torch.uint8)
    assert torch.equal(sum_, merged)  # the composite is exactly its two placed digits
    lo, hi = torch.minimum(labels[first], labels[second]), torch.maximum(labels[first], labels[second])
    for m in range(120):  # the lower class's digit first: each source is its digit, shifted on the canvas
        digit_lo = images[first[m]] if labels[first[m]] == lo[m] else images[second[m]]
        digit_hi = images[second[m]] if labels[first[m]] == lo[m] else images[first[m]]
        # pad 2 >= shift 2: no pixel is cut, so each source holds all of its digit's ink
        assert int(sources[m, 0].sum()) == int(digit_lo.sum()) and int(sources[m, 1].sum()) == int(digit_hi.sum())
    assert torch.equal(hot.topk(2, dim=1).indices.sort(1).values, torch.stack([lo, hi], 1))
    split = MultiMNIST(pairs_per_digit=1, shift=0, seed=0).load("test")
    assert split.sources.shape == (1000, 2, 1, 36, 36)
    assert torch.equal(split.subset(slice(0, 5)).sources, split.sources[:5])


def test_each_reconstruction_sees_only_its_own_capsule():
    """A hand-built example: capsules 2 and 7 are the labels; the decoder's input for the first reconstruction
    holds capsule 2 alone, the second capsule 7 alone (training); at evaluation the two most active."""
    decoder = capslab.MaskedDecoder(10, 3, (1, 4, 4), hidden=(5,), separate=2)
    seen = []

    class Record(torch.nn.Module):  # stands in for the decoder's layers: keeps what it is fed
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(*x.shape[:-1], 16)

    decoder.net = Record()
    poses = torch.arange(1, 31, dtype=torch.float32).view(1, 10, 3)  # every capsule distinct, none zero
    targets = torch.zeros(1, 10, dtype=torch.int64)
    targets[0, [7, 2]] = 1
    out = decoder(poses, torch.rand(1, 10), targets)
    assert out.shape == (1, 2, 1, 4, 4)
    x = seen[-1].view(1, 2, 10, 3)  # (B, K, J, D): the input of each reconstruction
    for k, cls in enumerate((2, 7)):
        assert torch.equal(x[0, k, cls], poses[0, cls])
        others = [j for j in range(10) if j != cls]
        assert (x[0, k, others] == 0).all(), f"reconstruction {k} sees another capsule"
    decoder.eval()
    scores = torch.zeros(1, 10)
    scores[0, 9], scores[0, 4] = 0.9, 0.8
    decoder(poses, scores, targets)
    x = seen[-1].view(1, 2, 10, 3)
    assert torch.equal(x[0, 0, 4], poses[0, 4]) and torch.equal(x[0, 1, 9], poses[0, 9])
    assert x[0, 0].abs().sum() == poses[0, 4].abs().sum() and x[0, 1].abs().sum() == poses[0, 9].abs().sum()


def test_the_reconstruction_term_is_the_sum_over_the_two_digits():
    from capslab.train.objective import total_loss

    recon = torch.rand(3, 2, 1, 6, 6)
    sources = torch.rand(3, 2, 1, 6, 6)
    out = capslab.ModelOutput(torch.rand(3, 10), None, recon)
    targets = torch.zeros(3, 10, dtype=torch.int64)
    targets[:, [1, 5]] = 1
    params = capslab.ReconstructionParams(weight=0.5)
    loss = capslab.build_loss("margin")
    got = total_loss(out, torch.rand(3, 1, 6, 6), targets, loss, params, 0, sources) - loss(out.scores, targets)
    per_digit = [((recon[:, k] - sources[:, k]) ** 2).flatten(1).sum(1).mean() for k in range(2)]
    torch.testing.assert_close(got, 0.5 * (per_digit[0] + per_digit[1]))
    with pytest.raises(capslab.CapslabError, match="no source images"):
        total_loss(out, torch.rand(3, 1, 6, 6), targets, loss, params, 0, None)


def test_a_composed_batch_moves_with_its_sources():
    from capslab.train.data import train_batches

    split = MultiMNIST(pairs_per_digit=1, shift=0, seed=0).load("test").subset(slice(0, 16))
    for images, _, sources in train_batches(split, 8, 3, torch.Generator().manual_seed(0), crop=30):
        assert images.shape == (8, 1, 30, 30) and sources.shape == (8, 2, 1, 30, 30)
        torch.testing.assert_close(sources.sum(1).clamp_max(1.0), images)  # the same crop and shift for all
