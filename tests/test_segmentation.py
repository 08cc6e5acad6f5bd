"""kdutils.segmentation, the task module of segmentation: the network's outputs,
its targets, the loss against a hand computation, evaluation, and that it learns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdutils import scenes, segmentation

SMALL = dict(size=32, scale=(1.0, 2.0), source="digits", threshold=30)


def test_outputs_have_the_protocols_shapes():
    net = segmentation.build("resnet8_w8-8-12-16")
    x = torch.randn(3, 1, 32, 32)
    out = net(x)
    assert out["feat"].shape == (3, 16, 8, 8)
    assert out["scores"].shape == (3, segmentation.NUM_CLASSES, 8, 8)
    assert out["logits"].shape == (3, 11, 32, 32)
    # the logits are the scores, upsampled and nothing else
    up = F.interpolate(out["scores"], size=(32, 32), mode="bilinear")
    torch.testing.assert_close(out["logits"], up)
    # the backbone's classifier is gone: no parameter is left unused
    out["logits"].sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_the_backbone_is_the_named_resnet_without_its_classifier():
    net = segmentation.build("resnet14")
    assert not hasattr(net, "fc") and len(net.layer3) == 2
    assert net.layer3[-1].conv2.out_channels == 64 and net.stem[0].in_channels == 1
    with pytest.raises(ValueError, match="unknown model"):
        segmentation.build("vgg11")


def test_targets_are_the_batchs_masks():
    s = scenes.make_scenes(6, **SMALL)
    idx = torch.tensor([4, 1])
    tgt = segmentation.targets(s, idx)
    assert set(tgt) == {"masks"} and tgt["masks"].dtype == torch.int64
    assert torch.equal(tgt["masks"], torch.stack([s.masks[4], s.masks[1]]))


def test_task_loss_is_the_mean_pixel_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 11, 3, 4, generator=g, dtype=torch.float64)
    masks = torch.randint(0, 11, (2, 3, 4), generator=g)
    loss, parts = segmentation.task_loss({"logits": logits}, {"masks": masks})
    # -log softmax of the true class, pixel by pixel, averaged over all 24
    terms = []
    for b in range(2):
        for i in range(3):
            for j in range(4):
                z = logits[b, :, i, j]
                terms.append(math.log(z.exp().sum()) - float(z[masks[b, i, j]]))
    want = sum(terms) / len(terms)
    assert float(loss) == pytest.approx(want, rel=1e-10)
    assert parts == {"ce": pytest.approx(want)}


def test_task_loss_refuses_logits_and_masks_that_disagree():
    with pytest.raises(ValueError, match="must agree"):
        segmentation.task_loss(
            {"logits": torch.zeros(2, 11, 8, 8)},
            {"masks": torch.zeros(2, 4, 4, dtype=torch.long)},
        )


class _Oracle(nn.Module):
    """Finds each input among the scenes' normalised images and answers with
    its true mask, one-hot: what a perfect network would say."""

    def __init__(self, s: scenes.SceneSet) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))  # a parameter, for the device
        self.images = scenes.to_input(s.images).flatten(1)
        self.masks = s.masks

    def forward(self, x):
        assert not self.training
        hit = (x.flatten(1)[:, None] == self.images[None]).all(dim=2)  # (B, N)
        assert (hit.sum(dim=1) == 1).all(), "an input that is no scene's image"
        masks = self.masks[hit.int().argmax(dim=1)]
        logits = 5.0 * F.one_hot(masks, 11).permute(0, 3, 1, 2).float()
        return {"logits": logits + self.bias}


def test_a_network_that_outputs_the_true_masks_scores_one():
    s = scenes.make_scenes(10, **SMALL)
    oracle = _Oracle(s).train()
    m = segmentation.evaluate(oracle, s, batch_size=4)  # 4 + 4 + 2 scenes
    assert m["miou"] == pytest.approx(1.0) and m["pixel_acc"] == pytest.approx(1.0)
    assert oracle.training  # put back in the mode it was in
    assert set(m) == {"miou", "pixel_acc", *(f"iou_{c}" for c in range(11))}


def test_evaluate_counts_a_network_that_says_background_everywhere():
    s = scenes.make_scenes(5, **SMALL)

    class Background(nn.Module):
        def forward(self, x):
            logits = torch.zeros(len(x), 11, *x.shape[-2:])
            logits[:, 0] = 1.0
            return {"logits": logits}

    m = segmentation.evaluate(Background(), s)
    bg = float((s.masks == 0).double().mean())
    assert m["pixel_acc"] == pytest.approx(bg)
    assert m["iou_0"] == pytest.approx(bg) and m["iou_0"] < 1
    present = [c for c in range(1, 11) if (s.masks == c).any()]
    assert all(m[f"iou_{c}"] == 0 for c in present)
    assert m["miou"] == pytest.approx(bg / (1 + len(present)))


def test_a_tiny_network_fits_eight_scenes():
    torch.manual_seed(0)
    s = scenes.make_scenes(8, seed=5, **SMALL)
    net = segmentation.build("resnet8_w8-8-12-16")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, tgt = scenes.to_input(s.images), segmentation.targets(s, torch.arange(8))
    losses = []
    for _ in range(40):
        loss, parts = segmentation.task_loss(net(x), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["ce"])
    assert losses[-1] < 0.3 * losses[0], losses
    m = segmentation.evaluate(net, s)
    assert m["pixel_acc"] > float((s.masks == 0).double().mean())
