"""Config, profiles and make_config: values, clear errors, canonical equality."""

from __future__ import annotations

import dataclasses

import pytest

import kdutils as kd
from kdutils.config import PROFILES, Config, make_config, teacher_config
from kdutils.data import DATASETS
from kdutils.models import MODELS


def test_paper_profile_is_the_survey_setting():
    cfg = make_config("paper", method="kd")
    assert cfg == Config(profile="paper")
    assert (cfg.dataset, cfg.teacher, cfg.student) == (
        "cifar10",
        "resnet56",
        "resnet20",
    )
    assert cfg.epochs == 240 and cfg.batch_size == 64
    assert cfg.lr == 0.05 and cfg.momentum == 0.9 and cfg.weight_decay == 5e-4
    assert (
        cfg.schedule == "step"
        and cfg.milestones == (150, 180, 210)
        and cfg.gamma == 0.1
    )
    assert cfg.augment is True and cfg.train_subset is None
    # T=4 and CE 0.1 + KD 0.9 are KD's constructor defaults, not config fields.
    import inspect

    defaults = {
        k: p.default
        for k, p in inspect.signature(kd.METHODS["kd"].__init__).parameters.items()
    }
    assert (defaults["T"], defaults["ce_weight"], defaults["kd_weight"]) == (
        4.0,
        0.1,
        0.9,
    )


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_profile_builds_and_applies_its_overrides(profile):
    cfg = make_config(profile, method="kd", seed=3)
    assert cfg.profile == profile and cfg.seed == 3 and cfg.method == "kd"
    for k, v in PROFILES[profile].items():
        assert getattr(cfg, k) == v
    assert cfg.dataset in DATASETS and cfg.student in MODELS and cfg.teacher in MODELS


def test_smoke_and_quick_use_the_offline_dataset():
    for profile in ("smoke", "quick"):
        assert make_config(profile).dataset == "fashion-mnist"
    assert make_config("smoke").epochs < make_config("quick").epochs


def test_overrides_win_over_the_profile():
    cfg = make_config("quick", epochs=3, student="resnet14", lr=0.01)
    assert (cfg.epochs, cfg.student, cfg.lr) == (3, "resnet14", 0.01)


def _assert_names_choices(info, bad, choices):
    message = str(info.value)
    assert repr(bad) in message or bad in message
    for c in choices:
        assert c in message


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError) as info:
        make_config("fast")
    _assert_names_choices(info, "fast", PROFILES)


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError) as info:
        make_config("smoke", method="kdd")
    _assert_names_choices(info, "kdd", kd.METHODS)


@pytest.mark.parametrize("field", ["student", "teacher"])
def test_unknown_model_names_the_choices(field):
    with pytest.raises(ValueError) as info:
        make_config("smoke", method="kd", **{field: "resnet19"})
    _assert_names_choices(info, "resnet19", MODELS)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError) as info:
        make_config("smoke", dataset="svhn")
    _assert_names_choices(info, "svhn", DATASETS)


def test_unknown_hyperparameter_is_rejected_with_the_accepted_ones():
    with pytest.raises(ValueError) as info:
        make_config("smoke", method="kd", temperature=4)
    message = str(info.value)
    assert "temperature" in message
    for name in ("T", "ce_weight", "kd_weight"):
        assert name in message


def test_ce_takes_no_hyperparameters():
    with pytest.raises(ValueError, match="T"):
        make_config("smoke", method="ce", T=4)


def test_known_hyperparameters_go_to_method_args():
    cfg = make_config("smoke", method="kd", T=8, kd_weight=0.5)
    assert cfg.method_args["T"] == 8 and cfg.method_args["kd_weight"] == 0.5
    assert make_config("smoke", method="kd", method_args={"T": 8}).method_args["T"] == 8


def test_explicit_defaults_are_the_same_experiment():
    """T=4 given or left to KD's default, T=8 or T=8.0: one config, one key."""
    implicit = make_config("smoke", method="kd")
    explicit = make_config("smoke", method="kd", T=4.0, ce_weight=0.1, kd_weight=0.9)
    assert implicit == explicit and implicit.key_json() == explicit.key_json()
    as_int = make_config("smoke", method="kd", T=8)
    as_float = make_config("smoke", method="kd", T=8.0)
    assert as_int == as_float and as_int.key_json() == as_float.key_json()
    assert as_int.key_json() != implicit.key_json()


def test_method_args_order_does_not_matter():
    a = make_config("smoke", method="kd", T=2.0, ce_weight=0.3, kd_weight=0.7)
    b = make_config("smoke", method="kd", kd_weight=0.7, ce_weight=0.3, T=2.0)
    c = Config(
        method_args={"kd_weight": 0.7, "T": 2.0, "ce_weight": 0.3}, **_smoke_fields()
    )
    assert a == b == c
    assert a.key_json() == b.key_json() == c.key_json()
    assert a.name == b.name
    assert list(b.method_args) == sorted(b.method_args)


def _smoke_fields():
    return dict(PROFILES["smoke"], profile="smoke")


def test_different_method_args_give_a_different_key():
    a = make_config("smoke", method="kd", T=2.0)
    b = make_config("smoke", method="kd", T=3.0)
    assert a != b and a.key_json() != b.key_json()


def test_config_is_frozen():
    cfg = make_config("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 5  # type: ignore[misc]
    before = cfg.epochs
    assert cfg.replace(epochs=before + 7).epochs == before + 7
    assert cfg.epochs == before


def test_milestones_are_normalised_to_a_tuple_of_ints():
    a = Config(milestones=[150.0, 180, 210])
    assert a.milestones == (150, 180, 210) and a == Config()


def test_dict_round_trip():
    cfg = make_config("smoke", method="kd", T=2.0)
    d = cfg.to_dict()
    assert d["milestones"] == list(cfg.milestones)
    assert Config.from_dict(d) == cfg


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", -0.1),
        ("schedule", "linear"),
    ],
)
def test_invalid_recipe_values_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        make_config("smoke", **{field: value})


def test_name_is_readable():
    cfg = make_config("quick", method="kd", T=8, seed=2)
    assert cfg.name == "kd-resnet32-resnet8-fashion-mnist-T8-s2"
    assert make_config("quick", method="ce").name == "ce-resnet8-fashion-mnist-s0"


def test_teacher_config_is_the_teachers_ce_run():
    cfg = make_config("quick", method="kd", T=8, seed=2, teacher_seed=1)
    t = teacher_config(cfg)
    assert t.method == "ce" and t.student == cfg.teacher and t.teacher is None
    assert t.method_args == {} and t.seed == 1
    assert (t.dataset, t.epochs, t.lr, t.train_subset) == (
        cfg.dataset,
        cfg.epochs,
        cfg.lr,
        cfg.train_subset,
    )


def test_one_teacher_serves_every_student_seed_and_hyperparameter():
    a = make_config("quick", method="kd", seed=0)
    b = make_config("quick", method="kd", seed=1, T=8)
    assert teacher_config(a) == teacher_config(b)
    assert teacher_config(a).key_json() == teacher_config(b).key_json()


def test_teacher_epochs_overrides_epochs_for_the_teacher():
    cfg = make_config("quick", method="kd", epochs=4, teacher_epochs=9)
    assert (
        teacher_config(cfg).epochs == 9 and teacher_config(cfg).teacher_epochs is None
    )
    assert teacher_config(cfg.replace(teacher_epochs=None)).epochs == 4


def test_teacher_config_without_a_teacher_is_an_error():
    with pytest.raises(ValueError, match="teacher"):
        teacher_config(make_config("smoke", method="ce", teacher=None))


def test_a_method_that_needs_a_teacher_requires_one():
    with pytest.raises(ValueError, match="teacher"):
        make_config("smoke", method="kd", teacher=None)


def test_replace_with_another_method_starts_from_its_defaults():
    cfg = make_config("smoke", method="kd", T=8)
    ce = cfg.replace(method="ce")
    assert ce.method_args == {}
    assert ce.replace(method="kd").method_args["T"] == 4.0
    assert cfg.replace(seed=3).method_args["T"] == 8.0


def test_a_teacher_is_evaluated_once_after_its_last_epoch():
    cfg = make_config("quick", method="kd", teacher_epochs=5)
    t = teacher_config(cfg)
    assert (t.epochs, t.eval_every) == (5, 5)
    with pytest.raises(ValueError, match="eval_every"):
        cfg.replace(eval_every=0)
