"""The profile table: everything that changes with the profile, in one place.

A *profile* (``smoke``, ``quick``, ``paper``) scales the whole book: the data
and models of a run (:data:`PROFILES`), the seeds and the sizes of each
chapter's experiments (:data:`CHAPTERS`), and the intermediate models of the
pipelines (:data:`PIPELINE_MODELS`: TAKD's assistant, ALTKD's teachers). The
notebooks (``kd.profiles.chapter("06_online", profile)``) and the Table-1
reproduction (``kdutils.reproduce``) both read it, so a chapter and the
reproduction ask for the same runs and share them through the cache.

It is plain data and imports nothing of kdutils. What a *method* needs at
another length (a pre-training stage of 30 of the reference 240 epochs) is
stated by the method itself (``Distiller.epoch_args``), not here.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "CHAPTERS",
    "FINAL_EVAL_ONLY",
    "PIPELINE_MODELS",
    "PROFILES",
    "chapter",
    "pipeline_models",
]

# A run's data, models and recipe per profile: overrides of ``Config``'s
# defaults, which are the ``paper`` profile: the survey's data and models, the
# CRD benchmark's recipe (``book/settings.md`` gives each setting's source).
# ``quick`` sizes were measured on a 2-core CPU: a 10k Fashion-MNIST subset,
# 8 epochs, no augmentation (so the teacher's logits are computed once and
# shared by every KD run), ResNet32 -> ResNet8 (ResNet56 -> ResNet20 does not
# fit the budget; at 8 epochs ResNet56 was also a worse teacher than ResNet32),
# and the paper's learning rate, 0.05, with a cosine schedule over the 8 epochs.
# Every profile holds out a stratified tenth of its training images as a
# validation split (``Config.val_fraction``), the only data anything is
# chosen on.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        dataset="fashion-mnist",
        teacher="resnet14",
        student="resnet8",
        epochs=3,
        batch_size=64,
        lr=0.05,
        schedule="cosine",
        augment=False,
        train_subset=2000,
        test_subset=1000,
    ),
    "quick": dict(
        dataset="fashion-mnist",
        teacher="resnet32",
        student="resnet8",
        epochs=8,
        batch_size=128,
        lr=0.05,
        schedule="cosine",
        augment=False,
        train_subset=10000,
        test_subset=None,
    ),
    # The CRD benchmark's recipe on CIFAR-10 (Config's defaults), less a
    # validation tenth of the training set (45,000 images trained on, 5,000
    # held out for choosing).
    "paper": dict(),
}

# The models a pipeline gets besides the profile's teacher and student.
PIPELINE_MODELS: dict[str, dict[str, list[str]]] = {
    # TAKD's assistant: the survey's ResNet32 between ResNet56 and ResNet20;
    # quick and smoke bridge their own teacher and student.
    "takd": {
        "paper": ["resnet32"],
        "quick": ["resnet20"],
        "smoke": ["resnet8_w16-20-40-80"],
    },
    # ALTKD's teachers, the profile's own teacher first: the survey's 3.
    "multi_teacher": {
        "paper": ["resnet56", "resnet44", "resnet32"],
        "quick": ["resnet32", "resnet20", "resnet14"],
        "smoke": ["resnet14", "resnet8_w16-20-40-80"],
    },
}

# Methods whose chapter evaluates the student only after its last epoch (it
# shows final accuracies, not learning curves), and pipelines likewise: the
# reproduction measures them the same way, so neither asks the other's runs
# for an evaluation they lack (``eval_every`` is not in a run's key, but a
# cached run that lacks a requested evaluation is trained again).
FINAL_EVAL_ONLY: dict[str, frozenset[str]] = {
    "methods": frozenset({"crd", "fitnet", "at", "afd", "fsp", "rkd", "irg", "sp"}),
    "pipelines": frozenset({"takd"}),
}

_SEEDS = {"smoke": [0], "quick": [0, 1], "paper": [0, 1, 2]}


def _seeds_only(**per_profile: list[int]) -> dict[str, dict[str, Any]]:
    return {p: dict(seeds=s) for p, s in {**_SEEDS, **per_profile}.items()}


# Each chapter's settings per profile, keyed by the notebook's file stem. Every
# chapter has ``seeds``; the rest is the chapter's own (named in its notebook).
CHAPTERS: dict[str, dict[str, dict[str, Any]]] = {
    "01_traditional_kd": {
        "smoke": dict(seeds=[0, 1], temperatures=[1.0, 4.0]),
        "quick": dict(seeds=[0, 1, 2], temperatures=[1.0, 2.0, 4.0, 8.0]),
        "paper": dict(seeds=[0, 1, 2], temperatures=[1.0, 2.0, 4.0, 8.0, 16.0]),
    },
    "02_output_losses": _seeds_only(),
    # smoke only proves the pipeline; two seeds are the chapter's most.
    "03_feature_fitting": _seeds_only(paper=[0, 1]),
    "04_feature_knowledge": _seeds_only(),
    # CRCD scores B x B relations against K negatives each: on the CPU
    # profiles fewer negatives than the authors' 500 keep a run near CRD's cost.
    "05_structural_knowledge": {
        p: dict(seeds=_SEEDS[p], crcd_args=dict(nce_k=64) if p != "paper" else {})
        for p in ("smoke", "quick", "paper")
    },
    "06_online": {
        "smoke": dict(seeds=[0], ffl_seeds=[0]),
        "quick": dict(seeds=[0, 1], ffl_seeds=[0]),
        "paper": dict(seeds=[0, 1, 2], ffl_seeds=[0, 1, 2]),
    },
    # ``frskd``: FRSKD's arguments; smoke only proves the code, with a
    # self-teacher of width 1 (the authors' 2 costs about three students).
    "07_self": {
        "smoke": dict(seeds=[0], generations=1, frskd=dict(width=1)),
        # FRSKD's self-teacher at the authors' width 2 costs about 9.5 minutes
        # per quick seed (measured 0.91 s a step against BYOT's 0.28 s), past
        # the chapter's budget alone; width 1 (0.54 s a step) in quick.
        "quick": dict(seeds=[0, 1], generations=1, frskd=dict(width=1)),
        "paper": dict(seeds=[0, 1, 2], generations=3, frskd={}),
    },
    "08_multi_teacher": {
        p: dict(seeds=_SEEDS[p], teachers=PIPELINE_MODELS["multi_teacher"][p])
        for p in PROFILES
    },
    "09_progressive": {
        "smoke": dict(seeds=[0], snapshot=dict(cycles=3), anchors=(1, 2, 3)),
        "quick": dict(seeds=[0, 1], snapshot={}, anchors=(2, 4, 6, 8)),
        "paper": dict(seeds=[0, 1, 2], snapshot={}, anchors=(60, 120, 180, 240)),
    },
    "10_adversarial": _seeds_only(),
    # The search's budget: candidate epochs, planting's start widths, step and
    # rounds, how many architectures are sampled and trained, recovery epochs.
    "11_nas_kd": {
        "smoke": dict(
            seeds=[0, 1],
            epochs=1,
            start=(4, 4, 8, 16),
            step=4,
            rounds=1,
            n=3,
            samples=100,
            rec_epochs=3,
        ),
        "quick": dict(
            seeds=[0, 1],
            epochs=2,
            start=(4, 4, 8, 16),
            step=4,
            rounds=4,
            n=8,
            samples=500,
            rec_epochs=15,
        ),
        "paper": dict(
            seeds=[0, 1],
            epochs=30,
            start=(8, 8, 16, 32),
            step=8,
            rounds=5,
            n=16,
            samples=500,
            rec_epochs=30,
        ),
    },
    "12_small_networks": {
        "smoke": dict(
            seeds=[0],
            teachers=["resnet14"],
            assistant=PIPELINE_MODELS["takd"]["smoke"][0],
            stops=[0.5],
        ),
        "quick": dict(
            seeds=[0, 1],
            teachers=["resnet14", "resnet32"],
            assistant=PIPELINE_MODELS["takd"]["quick"][0],
            stops=[0.25, 0.5, 0.75],
        ),
        "paper": dict(
            seeds=[0, 1, 2],
            teachers=["resnet32", "resnet44", "resnet56"],
            assistant=PIPELINE_MODELS["takd"]["paper"][0],
            stops=[0.25, 0.5, 0.75],
        ),
    },
    # Table 1 is the survey's mean of 3 runs; smoke proves the pipeline.
    # ``tune_rows``: the rows of the tuned table (None: all). In smoke the
    # search runs for KD only (its two knobs: 5 runs of its own there).
    "13_comparison": {
        "smoke": dict(seeds=[0], tune_rows=["ResNet56", "ResNet20", "KD"]),
        "quick": dict(seeds=[0, 1, 2, 3, 4], tune_rows=None),
        "paper": dict(seeds=[0, 1, 2, 3, 4], tune_rows=None),
    },
    # Read with chapter 13's statistics, so at least 3 seeds outside smoke.
    # ``mlkd``: whether MLKD is trained. Each of its steps runs the student
    # twice and the teacher on the strong view, so its runs would take
    # ``quick`` past the chapter's budget (15 minutes of its own runs): there
    # it is a row of ``paper`` only, and ``smoke`` checks that it trains.
    # Detection and segmentation on synthetic scenes (kdutils.dense_train
    # holds the runs' sizes per profile, DENSE_PROFILES).
    "16_applications_dense": _seeds_only(quick=[0, 1]),
    # Language models, verification embeddings and generators (the trainers
    # kdutils.lm_train, face_train and gan_train hold the sizes per profile).
    "17_applications_faces": _seeds_only(quick=[0, 1]),
    "18_applications_generation": _seeds_only(quick=[0, 1]),
    "19_applications_language": _seeds_only(quick=[0, 1]),
    "15_after_the_survey": {
        p: dict(seeds=s, mlkd=p != "quick")
        for p, s in {**_SEEDS, "quick": [0, 1, 2]}.items()
    },
}


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(
            f"unknown profile {profile!r}; choose from: {', '.join(PROFILES)}"
        )


def chapter(name: str, profile: str) -> dict[str, Any]:
    """Chapter ``name``'s settings in ``profile`` (a copy: edit it freely)."""
    _check_profile(profile)
    if name not in CHAPTERS:
        raise ValueError(
            f"no settings for chapter {name!r}; chapters: {', '.join(CHAPTERS)}"
        )
    return copy.deepcopy(CHAPTERS[name][profile])


def pipeline_models(pipeline: str, profile: str) -> list[str]:
    """The models ``pipeline`` is given in ``profile`` (see :data:`PIPELINE_MODELS`)."""
    _check_profile(profile)
    if pipeline not in PIPELINE_MODELS:
        raise ValueError(
            f"no models for pipeline {pipeline!r}; known: {', '.join(PIPELINE_MODELS)}"
        )
    return list(PIPELINE_MODELS[pipeline][profile])
