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
    merged, hot, first, second = compose(images, labels, 3, 200, 0, 4, torch.Generator().manual_seed(0))
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
    merged, _, _, _ = compose(images, labels, 2, 20, shift, 4, torch.Generator().manual_seed(1))
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
    assert ds.info == capslab.DataInfo(1, 36, 36, 10, multi_label=True)
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
