"""Diagrams of chapter 18, distillation for image generation (the survey's
section 5.4): what Chen et al. 2020b's student generator and student
discriminator compare with a frozen teacher GAN, for the same noise. See
kdutils/diagrams/__init__.py for the style."""

from __future__ import annotations

from . import Diagram, diagram


@diagram(
    "gan_chen",
    "Distilling a GAN generator (survey §5.4, Chen et al. 2020b): pixel and "
    "perceptual terms to the teacher's image, and a student discriminator "
    "that takes the teacher's images as real",
)
def _gan_chen(d: Diagram) -> None:
    z = d.data("noise z", id="z")
    with d.group("teacher GAN (frozen)", "teacher"):
        gt = d.teacher("generator G_T\n(wide)", id="GT")
        dt = d.teacher("discriminator D_T\n(features D̂_T)", id="DT")
    gs = d.student("student generator G_S\n(thin)", id="GS")
    ds = d.aux("student discriminator D_S\n(features D̂_S)", id="DS")
    d.edge(z, gt)
    d.edge(z, gs)
    pixel = d.loss("pixel: mean |G_S(z) − G_T(z)|", id="pix")
    d.edge(gs, pixel, "G_S(z)")
    d.edge(gt, pixel, "G_T(z)", detached=True)
    perc = d.loss("perceptual: mean |D̂_T(G_S(z)) − D̂_T(G_T(z))|", id="perc")
    d.edge(gs, dt, "G_S(z)")
    d.edge(gt, dt, "G_T(z)", detached=True)
    d.edge(dt, perc, "D̂_T of both")
    adv = d.loss("GAN loss: G_T(z) real,\nG_S(z) fake", id="adv")
    d.edge(gt, ds, "G_T(z) as real", detached=True)
    d.edge(gs, ds, "G_S(z) as fake")
    d.edge(ds, adv, "logits")
    tri = d.loss(
        "triplet (trains D_S): anchor D̂_T(G_T(z)),\n"
        "pulls D̂_S(G_T(z)), pushes D̂_S(G_S(z))",
        id="tri",
    )
    d.edge(ds, tri, "D̂_S of both")
    d.edge(dt, tri, "anchor", detached=True)
