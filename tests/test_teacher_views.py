"""The teacher's outputs stored once per augmentation view (issue: speed II).

A frozen teacher gives each of an image's finitely many augmented views one
fixed output; a student that reads them from storage must train as it does
with the teacher online: the same views, the same order, the same losses up
to the teacher's arithmetic.
"""

from __future__ import annotations

import pytest
import torch

import kdutils as kd
from kdutils import data as kdata
from kdutils.distillers.base import Distiller


@pytest.mark.parametrize("name", ["digits", "fashion-mnist", "cifar10"])
def test_every_view_augment_batch_draws_is_the_one_render_view_draws(name):
    info = kdata.DATASETS[name]
    g = torch.Generator().manual_seed(3)
    images = torch.randint(
        0, 256, (64, info.channels, info.size, info.size), dtype=torch.uint8
    )
    plain = kdata.augment_batch(images, info, torch.Generator().manual_seed(7))
    out, view = kdata.augment_batch(
        images, info, torch.Generator().manual_seed(7), views=True
    )
    assert torch.equal(out, plain)  # the same draws either way
    assert (
        view.dtype == torch.int64
        and 0 <= view.min()
        and view.max() < kdata.view_count(info)
    )
    for i in range(len(images)):
        one = kdata.render_view(images[i : i + 1], info, int(view[i]))
        assert torch.equal(one[0], out[i]), (name, i, int(view[i]))
    del g


def test_the_view_counts_are_every_crop_times_the_flip():
    assert kdata.view_count(kdata.DATASETS["cifar10"]) == 9 * 9 * 2
    assert kdata.view_count(kdata.DATASETS["fashion-mnist"]) == 5 * 5 * 2
    assert kdata.view_count(kdata.DATASETS["digits"]) == 3 * 3
    # Every view is reachable and distinct on an image with no symmetry.
    info = kdata.DATASETS["fashion-mnist"]
    img = torch.arange(28 * 28, dtype=torch.int64).remainder(251).to(torch.uint8)
    img = img.view(1, 1, 28, 28) + 1
    seen = {kdata.render_view(img, info, v).numpy().tobytes() for v in range(50)}
    assert len(seen) == 50
    with pytest.raises(ValueError, match="view must be in 0..49"):
        kdata.render_view(img, info, 50)


_FORWARD = {m: kd.get_method(m).forward for m in ("kd", "rkd")}


def _record_losses(monkeypatch, method: str = "kd") -> list[float]:
    """Every training step's distillation terms (their sum), in order."""
    cls = kd.get_method(method)
    losses: list[float] = []
    forward = _FORWARD[method]

    def recording(self: Distiller, x, y, teacher_out=None, idx=None):
        logits, terms = forward(self, x, y, teacher_out=teacher_out, idx=idx)
        if self.training:
            losses.append(sum(v.item() for k, v in terms.items() if k != "ce"))
        return logits, terms

    monkeypatch.setattr(cls, "forward", recording)
    return losses


def test_a_student_reading_stored_views_trains_as_with_the_teacher_online(
    digits_config, monkeypatch, capsys
):
    cfg = digits_config(method="kd", augment=True, epochs=3)
    online_losses = _record_losses(monkeypatch)
    online = kd.run(cfg, progress=False, compile=False)
    stored_losses = _record_losses(monkeypatch)
    stored = kd.run(cfg, progress=False, compile=False, teacher_views="float32")
    out = capsys.readouterr().out
    assert "logits on all 9 views of the training set computed once" in out
    assert stored.key != online.key  # a different computation, kept apart
    assert len(stored_losses) == len(online_losses) == 3 * -(-300 // cfg.batch_size)
    for a, b in zip(stored_losses, online_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    assert stored.provenance["teacher_views"] == "float32"
    # A second student of the same teacher loads the stored views.
    kd.run(cfg.replace(seed=1), progress=False, teacher_views="float32")
    assert "logits on all 9 views (loaded)" in capsys.readouterr().out


def test_a_student_reading_a_stored_embedding_trains_as_with_the_teacher_online(
    digits_config, monkeypatch, capsys
):
    cfg = digits_config(method="rkd", augment=True, epochs=2)
    online_losses = _record_losses(monkeypatch, "rkd")
    kd.run(cfg, progress=False, compile=False)
    stored_losses = _record_losses(monkeypatch, "rkd")
    kd.run(cfg, progress=False, compile=False, teacher_views="float32")
    assert "logits and pool on all 9 views" in capsys.readouterr().out
    assert len(stored_losses) == len(online_losses) > 0
    for a, b in zip(stored_losses, online_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_stored_views_in_float16_move_the_kd_loss_by_little(digits_config, capsys):
    cfg = digits_config(method="kd", augment=True, epochs=1)
    t_res = kd.run(kd.teacher_config(cfg), progress=False)
    teacher = t_res.load_model()
    train = kd.load_split(cfg, True)
    full = kd.teachers.teacher_view_outputs(t_res, teacher, train, "float32")["logits"]
    half = kd.teachers.teacher_view_outputs(t_res, teacher, train, "float16")["logits"]
    assert full.dtype == torch.float32 and half.dtype == torch.float16
    assert full.shape == (len(train), 9, 10)
    # Each stored view equals the teacher on that view, computed here.
    with torch.inference_mode():
        x = kdata.normalize(kdata.render_view(train.images, train.info, 4), train.info)
        direct = teacher(x)
    torch.testing.assert_close(full[:, 4], direct, rtol=1e-5, atol=1e-5)
    student = torch.randn(len(train), 9, 10, generator=torch.Generator().manual_seed(0))
    a = kd.losses.kd_loss(student.flatten(0, 1), full.flatten(0, 1))
    b = kd.losses.kd_loss(student.flatten(0, 1), half.float().flatten(0, 1))
    assert abs(a - b) / a < 1e-3


def test_stored_views_are_refused_where_they_cannot_apply(digits_config):
    with pytest.raises(ValueError, match="needs cfg.augment"):
        kd.run(digits_config(method="kd"), teacher_views="float16")
    with pytest.raises(ValueError, match="one of float16, float32"):
        kd.run(digits_config(method="kd", augment=True), teacher_views="bf16")
    with pytest.raises(ValueError, match="has no teacher"):
        kd.run(digits_config(method="ce", augment=True), teacher_views="float16")
    with pytest.raises(ValueError, match="reads more of its teacher"):
        kd.run(
            digits_config(method="fitnet", augment=True, epochs=1),
            teacher_views="float16",
            progress=False,
        )
    with pytest.raises(ValueError, match="needs augment=True"):
        kdata.Loader(kd.load_split(digits_config(), True), 32, views=True)


def test_a_corrupt_stored_view_file_is_set_aside_and_computed_again(
    digits_config, capsys
):
    cfg = digits_config(method="kd", augment=True, epochs=1)
    t_res = kd.run(kd.teacher_config(cfg), progress=False)
    teacher, train = t_res.load_model(), kd.load_split(cfg, True)
    first = kd.teachers.teacher_view_outputs(
        t_res, teacher, train, "float16", (), False
    )
    path = f"{t_res.path}/train_view_logits-float16.pt"
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    capsys.readouterr()
    again = kd.teachers.teacher_view_outputs(
        t_res, teacher, train, "float16", (), False
    )
    assert "[corrupt]" in capsys.readouterr().out
    assert torch.equal(first["logits"], again["logits"])
