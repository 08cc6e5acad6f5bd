"""Semantic segmentation of scenes: the network, its targets, loss and evaluation.

The task module of segmentation (survey section 5.2) for
:mod:`kdutils.scenes`: a CIFAR ResNet backbone with a small FCN-style head,
predicting one of ``NUM_CLASSES`` = 11 labels per pixel (0 the background,
``1 + k`` the Fashion-MNIST class ``k``). Like :mod:`kdutils.detection` it
provides ``NUM_CLASSES``, :func:`build`, :func:`targets`, :func:`task_loss`
and :func:`evaluate`, which is all the dense trainer uses.

The network (:class:`SegNet`) keeps the backbone's stem and three stages
(``layer3`` at stride 4: 16 x 16 on a 64 x 64 scene) and drops its pooling
and classifier. On ``layer3`` sits the head of FCN (Long et al. 2015) in its
smallest form: a 3 x 3 convolution to 64 channels, batch norm, ReLU, then
a 1 x 1 convolution to the 11 class scores (torchvision's ``FCNHead`` is
the same with ``C/4`` channels and a dropout).
The score map is upsampled bilinearly to the input's size. There is no skip
connection from the early layers: the score map at stride 4 is what
channel-wise and pixel-wise distillation act on, and with one path from it
to the prediction a change of the scores is a change of the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dense_metrics import segmentation_metrics
from .models import create_model
from .scenes import SceneSet, to_input

__all__ = ["NUM_CLASSES", "SegNet", "build", "targets", "task_loss", "evaluate"]

NUM_CLASSES = 11  # background + the 10 classes of the items


class SegNet(nn.Module):
    """A CIFAR ResNet's stages with an FCN head: ``x -> {"feat", "scores", "logits"}``.

    ``x``: float ``(B, 1, S, S)``, as :func:`kdutils.scenes.to_input` makes it.
    Returns ``"feat"``: ``layer3``'s output ``(B, C, S/4, S/4)``;
    ``"scores"``: class scores ``(B, 11, S/4, S/4)``; ``"logits"``: the scores
    upsampled to ``(B, 11, S, S)`` (bilinear, ``align_corners=False``).
    """

    def __init__(
        self, backbone: str = "resnet14", num_classes: int = NUM_CLASSES
    ) -> None:
        super().__init__()
        net = create_model(backbone, num_classes=num_classes, in_channels=1)
        # the backbone's stages only: its pooling and classifier are not used
        self.stem, self.layer1, self.layer2, self.layer3 = (
            net.stem,
            net.layer1,
            net.layer2,
            net.layer3,
        )
        self.backbone = backbone
        width = net.widths[-1]
        self.head = nn.Sequential(
            nn.Conv2d(width, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, num_classes, 1),
        )
        nn.init.kaiming_normal_(
            self.head[0].weight, mode="fan_out", nonlinearity="relu"
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feat = self.layer3(self.layer2(self.layer1(self.stem(x))))  # (B, C, S/4, S/4)
        scores = self.head(feat)  # (B, 11, S/4, S/4)
        logits = F.interpolate(
            scores, size=x.shape[-2:], mode="bilinear", align_corners=False
        )  # (B, 11, S, S)
        return {"feat": feat, "scores": scores, "logits": logits}


def build(backbone: str) -> SegNet:
    """The segmentation network on a backbone named as in
    :func:`kdutils.models.create_model`, e.g. ``build("resnet14")``."""
    return SegNet(backbone, NUM_CLASSES)


def targets(scenes: SceneSet, index: Tensor) -> dict[str, Tensor]:
    """The batch ``index`` of ``scenes``' targets: ``{"masks": (B, S, S) int64}``."""
    return {"masks": scenes.masks[index]}


def task_loss(
    out: dict[str, Tensor], tgt: dict[str, Tensor]
) -> tuple[Tensor, dict[str, float]]:
    """Per-pixel cross-entropy of ``out["logits"]`` with ``tgt["masks"]``.

    ``(B, 11, S, S)`` logits and ``(B, S, S)`` labels -> the mean over every
    pixel of the batch, unweighted (no class balancing, no ignored label).
    Returns the loss and ``{"ce": its value}``.
    """
    logits, masks = out["logits"], tgt["masks"]
    if logits.dim() != 4 or masks.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"logits (B, K, S, S) and masks (B, S, S) must agree, got "
            f"{tuple(logits.shape)} and {tuple(masks.shape)}"
        )
    loss = F.cross_entropy(logits, masks)
    return loss, {"ce": float(loss.detach())}


def evaluate(
    model: nn.Module, scenes: SceneSet, batch_size: int = 256
) -> dict[str, float]:
    """mIoU, pixel accuracy and per-class IoU of ``model`` on ``scenes``.

    The prediction of a pixel is the argmax of ``"logits"``; the metrics are
    :func:`kdutils.dense_metrics.segmentation_metrics` over the whole set.
    The model runs in eval mode under ``torch.inference_mode`` on its own
    device, and is put back in the mode it was in.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if len(scenes) == 0:
        raise ValueError("scenes is empty: there is nothing to evaluate")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    preds = []
    try:
        with torch.inference_mode():
            for lo in range(0, len(scenes), batch_size):
                x = to_input(scenes.images[lo : lo + batch_size].to(device))
                preds.append(model(x)["logits"].argmax(dim=1).cpu())
    finally:
        model.train(was_training)
    return segmentation_metrics(torch.cat(preds), scenes.masks, NUM_CLASSES)
