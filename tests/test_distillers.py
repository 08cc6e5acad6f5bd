"""Every registered method on tiny models, and KD in detail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdutils as kd
from kdutils.distillers import Distiller, check_weights, get_method, register

BATCH, CLASSES, CHANNELS, SIZE = 8, 10, 3, 16
# A tiny training set of the same shape, for methods whose ``setup`` needs data
# (connector shapes, a memory bank with one slot per sample).
N_TRAIN = 32


def _models(seed: int = 0):
    torch.manual_seed(seed)
    student = kd.create_model("resnet8", num_classes=CLASSES, in_channels=CHANNELS)
    teacher = kd.create_model("resnet14", num_classes=CLASSES, in_channels=CHANNELS)
    return student, teacher


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return x, y


def _train_data() -> kd.data.TensorData:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (N_TRAIN, CHANNELS, SIZE, SIZE), generator=g)
    labels = torch.arange(N_TRAIN) % CLASSES
    return kd.data.TensorData(images.to(torch.uint8), labels, "cifar10")


def _build(name: str):
    student, teacher = _models()
    distiller = kd.build(name, student, teacher)
    distiller.setup(_train_data())
    return distiller, student, teacher


METHOD_NAMES = sorted(kd.METHODS)


def test_register_refuses_an_unknown_status_and_a_stand_in_without_note():
    with pytest.raises(ValueError, match="status must be one of"):
        kd.register("nosuch_status", section="1", status="new")
    with pytest.raises(ValueError, match="must say what it stands for"):
        kd.register("nosuch_note", section="1", status="stand-in")
    assert "nosuch_status" not in kd.METHODS and "nosuch_note" not in kd.METHODS


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(status="after"), "must give its year"),
        (dict(status="after", year="2022"), "must give its year"),
        (dict(status="after", year=True), "must give its year"),
        (dict(status="after", note="2022"), "must give its year"),
        (dict(status="added", year=2022), "only given with status='after'"),
        (dict(year=2022), "only given with status='after'"),
    ],
)
def test_register_wants_a_year_exactly_for_methods_after_the_survey(kwargs, words):
    with pytest.raises(ValueError, match=words):
        kd.register("nosuch_year", section="2.1", **kwargs)
    assert "nosuch_year" not in kd.METHODS
    with pytest.raises(ValueError, match="year"):
        kd.distillers.describe_status("after", "2.1")
    line = kd.distillers.describe_status("after", "2.1", year=2023)
    assert line == "after the survey (2023), beside §2.1"


def test_the_registry_has_the_baselines():
    assert {"ce", "kd"} <= set(kd.METHODS)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_is_well_formed(name):
    cls = kd.METHODS[name]
    assert issubclass(cls, Distiller)
    assert name == name.lower() and cls.method_name == name
    assert cls.survey_section, "every method names its survey section"
    assert cls.status in kd.distillers.STATUSES
    assert bool(cls.status_note) == (cls.status == "stand-in")
    assert (cls.status_year is not None) == (cls.status == "after")
    assert (cls.__doc__ or "").strip(), "the CLI lists the first docstring line"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_forward_returns_logits_and_finite_named_terms(name):
    distiller, _, _ = _build(name)
    distiller.train()
    x, y = _batch()
    logits, terms = distiller(x, y, idx=torch.arange(BATCH))
    assert logits.shape == (BATCH, CLASSES)
    assert isinstance(terms, dict) and terms
    for key, value in terms.items():
        assert isinstance(key, str) and key == key.lower()
        assert isinstance(value, torch.Tensor) and value.shape == ()
        assert torch.isfinite(value), f"{name}: term {key} = {value}"
    assert sum(terms.values()).requires_grad


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_backward_trains_the_student_and_never_the_teacher(name):
    distiller, student, teacher = _build(name)
    distiller.train()
    x, y = _batch()
    _, terms = distiller(x, y, idx=torch.arange(BATCH))
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    if distiller.teacher is not None:  # methods without a teacher may ignore it
        assert all(not p.requires_grad for p in distiller.teacher.parameters())
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_teacher_stays_in_eval_mode(name):
    distiller, student, teacher = _build(name)
    for mode in (True, False, True):
        distiller.train(mode)
        assert all(m.training == mode for m in student.modules())
        if distiller.teacher is not None:
            assert not any(m.training for m in distiller.teacher.modules())


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_teacher_batch_norm_statistics_do_not_move(name):
    distiller, _, teacher = _build(name)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller.train()
    x, y = _batch()
    distiller(x, y, idx=torch.arange(BATCH))
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_optimizer_parameters_exclude_the_teacher(name):
    distiller, student, teacher = _build(name)
    trainable = {id(p) for p in distiller.parameters() if p.requires_grad}
    assert {id(p) for p in student.parameters()} <= trainable
    assert not trainable & {id(p) for p in teacher.parameters()}


@pytest.mark.parametrize(
    "name", [n for n in METHOD_NAMES if kd.METHODS[n].needs_teacher]
)
def test_a_method_that_needs_a_teacher_refuses_to_build_without_one(name):
    student, _ = _models()
    with pytest.raises((ValueError, TypeError)):
        kd.build(name, student, None)


def test_registry_rejects_duplicates_and_uppercase():
    with pytest.raises(ValueError, match="already registered"):
        register("kd", section="1")(type("KD2", (Distiller,), {}))
    with pytest.raises(ValueError, match="lowercase"):
        register("FitNet", section="2")
    assert kd.METHODS["kd"].__name__ == "KD"


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError) as info:
        get_method("nosuch")
    for name in kd.METHODS:
        assert name in str(info.value)


def test_check_weights():
    check_weights(a_weight=0.0, b_weight=1.5)
    with pytest.raises(ValueError, match="b_weight"):
        check_weights(a_weight=1.0, b_weight=-0.1)


# KD in detail


@pytest.mark.parametrize("T", [0, -1])
def test_kd_rejects_a_non_positive_temperature(T):
    student, teacher = _models()
    with pytest.raises(ValueError, match="T"):
        kd.build("kd", student, teacher, T=T)


@pytest.mark.parametrize("weights", [dict(ce_weight=-0.1), dict(kd_weight=-1.0)])
def test_kd_rejects_negative_weights(weights):
    student, teacher = _models()
    with pytest.raises(ValueError, match=next(iter(weights))):
        kd.build("kd", student, teacher, **weights)


def test_kd_defaults_are_table_1s():
    distiller, _, _ = _build("kd")
    assert distiller.hparams() == {"T": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}


def _kd_reference(logits_s, logits_t, y, T, ce_weight, kd_weight):
    """ce_weight * CE + kd_weight * T^2 mean_b KL(p_t || p_s), in float64 numpy."""
    s = logits_s.detach().double().numpy()
    t = logits_t.detach().double().numpy()

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ce = -log_softmax(s)[np.arange(len(y)), y.numpy()].mean()
    ls, lt = log_softmax(s / T), log_softmax(t / T)
    kl = (np.exp(lt) * (lt - ls)).sum(1).mean()
    return ce_weight * ce, kd_weight * T**2 * kl


def test_kd_terms_are_weighted_ce_and_kd_loss():
    student, teacher = _models()
    distiller = kd.build("kd", student, teacher, T=3.0, ce_weight=0.25, kd_weight=0.6)
    distiller.train()
    x, y = _batch()
    logits_s, terms = distiller(x, y, idx=torch.arange(BATCH))
    assert set(terms) == {"ce", "kd"}
    with torch.no_grad():
        logits_t = teacher(x)  # the teacher is in eval mode
    ce, kd_term = _kd_reference(logits_s, logits_t, y, 3.0, 0.25, 0.6)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(kd_term, rel=1e-4)


def test_kd_with_precomputed_teacher_logits_equals_the_teacher_forward():
    student, teacher = _models()
    distiller = kd.build("kd", student, teacher).train()
    x, y = _batch()
    with torch.no_grad():
        logits_t = teacher(x)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    _, online = distiller(x, y, idx=torch.arange(BATCH))
    student.load_state_dict(state)  # undo the BN running-stat update
    _, cached = distiller(x, y, teacher_out={"logits": logits_t})
    for k in ("ce", "kd"):
        torch.testing.assert_close(online[k], cached[k], rtol=0, atol=0)
    # ... and other teacher logits really change the loss.
    _, other = distiller(x, y, teacher_out={"logits": logits_t.flip(0)})
    assert not torch.equal(other["kd"], cached["kd"])


def test_ce_is_plain_cross_entropy_and_ignores_a_teacher():
    student, teacher = _models()
    distiller = kd.build("ce", student, teacher)
    assert distiller.teacher is None
    x, y = _batch()
    logits, terms = distiller(x, y, idx=torch.arange(BATCH))
    assert set(terms) == {"ce"}
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, y))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_precomputed_teacher_outputs_give_the_same_terms(name):
    """What the trainer passes as ``teacher_out`` (computed once, sliced per
    batch) must give exactly the terms of the live teacher forward."""
    distiller, student, _ = _build(name)
    if distiller.teacher is None or not distiller.cache_teacher:
        pytest.skip("no frozen teacher")
    distiller.train()
    x, y = _batch()
    t_out = distiller.teacher_outputs(x)
    assert set(t_out) == {"logits", *distiller.teacher_layers}
    state = {k: v.clone() for k, v in distiller.state_dict().items()}
    torch.manual_seed(0)
    _, live = distiller(x, y, idx=torch.arange(BATCH))
    distiller.load_state_dict(state)  # undo running-stat and memory updates
    torch.manual_seed(0)
    _, cached = distiller(x, y, teacher_out=t_out, idx=torch.arange(BATCH))
    assert live.keys() == cached.keys()
    for k in live:
        torch.testing.assert_close(live[k], cached[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_hparams_are_the_constructor_arguments_read_back(name):
    """``hparams()`` comes from the constructor's signature (the base class's):
    every argument is kept under its own name, with the value it was given
    (a default of None may be resolved, e.g. advfeat's layer to the last)."""
    from kdutils.config import method_defaults

    distiller, _, _ = _build(name)
    defaults, got = method_defaults(name), distiller.hparams()
    assert list(got) == list(defaults)
    assert {k: v for k, v in got.items() if defaults[k] is not None} == {
        k: v for k, v in defaults.items() if v is not None
    }
