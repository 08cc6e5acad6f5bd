"""Chapter 12: the stepwise relational pipeline standing in for Liu & Zhang
(2021): its wiring through the assistant, each step's loss, its checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdutils as kd
from kdutils.runs import run_id


def test_registered_as_a_stand_in_of_section_3_2():
    p = kd.pipelines.PIPELINES["stepwise_rkd"]
    assert (p.section, p.status) == ("3.2", "stand-in")
    assert "Liu & Zhang" in p.note and p.fn is kd.pipelines.stepwise_rkd


def test_each_step_is_rkd_plus_kd_through_the_distilled_assistant(
    digits_config, capsys
):
    cfg = digits_config(
        method="rkd", kd_weight=1.0, teacher="resnet20", student="resnet8", epochs=1
    )
    teacher, assistant, student = kd.pipelines.stepwise_rkd(
        cfg, ["resnet14"], progress=False
    )
    assert teacher.config["method"] == "ce" and teacher.config["student"] == "resnet20"
    for r in (assistant, student):
        assert r.config["method"] == "rkd"
        assert r.config["method_args"]["kd_weight"] == 1.0
        assert {"train_kd", "train_rkd_dist", "train_rkd_angle"} <= set(r.history[-1])
    assert assistant.config["student"] == "resnet14"
    assert assistant.teacher["key"] == teacher.key
    assert student.teacher["key"] == assistant.key
    assert student.config["teacher_runs"] == [run_id(assistant)]
    out = capsys.readouterr().out
    assert "[stepwise_rkd] stage 3/3 student resnet8 from resnet14" in out
    # The same chain as TAKD run with the same config: shared through the cache.
    again = kd.pipelines.takd(cfg, ["resnet14"], progress=False)
    assert [r.key for r in again] == [teacher.key, assistant.key, student.key]
    assert all(r.from_cache for r in again)


def test_a_step_adds_kd_on_each_sample_to_the_relational_terms():
    torch.manual_seed(0)
    s, t = kd.create_model("resnet8", 10, 1), kd.create_model("resnet14", 10, 1)
    d = kd.build("rkd", s, t, kd_weight=1.0, T=4.0).train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 12, 12, generator=g), torch.arange(8)
    logits_s, terms = d(x, y)
    assert set(terms) == {"ce", "kd", "rkd_dist", "rkd_angle"}
    ls = logits_s.detach().double().numpy() / 4
    lt = d.teacher_outputs(x)["logits"].double().numpy() / 4
    log_ps = ls - np.log(np.exp(ls).sum(1, keepdims=True))
    log_pt = lt - np.log(np.exp(lt).sum(1, keepdims=True))
    kl = 16 * (np.exp(log_pt) * (log_pt - log_ps)).sum(1).mean()
    assert terms["kd"].item() == pytest.approx(kl, rel=1e-4)


def test_needs_rkd_with_a_kd_term(digits_config):
    with pytest.raises(ValueError, match="rkd"):
        kd.pipelines.stepwise_rkd(digits_config(method="kd"), ["resnet14"])
    with pytest.raises(ValueError, match="kd_weight"):
        kd.pipelines.stepwise_rkd(
            digits_config(method="rkd", teacher="resnet20"), ["resnet14"]
        )
    with pytest.raises(ValueError, match="smaller"):
        kd.pipelines.stepwise_rkd(
            digits_config(method="rkd", kd_weight=1.0, teacher="resnet14"),
            ["resnet20"],
        )
