"""Study definitions run by `loafing reproduce --preset NAME`: which networks to train, and how to evaluate them.

Every preset covers the paper's studies for one setting: CT vs ST (Table 1, Fig. r2, Table r4),
restricted sampling spaces (Fig. 4, 5), sub-networks trained alone (Fig. 1, 4), layer deletion and
permutation (Fig. 6), KL trajectories (Fig. 7) and the lambda ablation (Fig. r3).
"""
from __future__ import annotations

import dataclasses

from loafing.errors import LoafingError
from loafing.reproduce import Preset, RunSpec
from loafing.train import TrainConfig

# MobileNetV3 sub-networks trained alone: the smallest, two in between (depths per stage of Table r1).
MBV3_ALONE_PLANS = ("[1] [3] [6] [10] [12]", "[1] [3,4] [6,7] [10] [12,13]", "[1,2] [3,4] [6,7,8] [10,11] [12,13]")


def study_runs(base: TrainConfig, *, lam: float, seeds: tuple[int, ...], space_sizes: tuple[int, ...],
               lams: tuple[float, ...], alone_plans: tuple[str, ...], kl_every: int) -> tuple[RunSpec, ...]:
    """The runs of one setting: CT and ST per seed, restricted spaces, other lambdas, sub-networks alone."""
    ct, st = dataclasses.replace(base, method="ct"), dataclasses.replace(base, method="st", lam=lam)
    runs = []
    for seed in seeds:
        first = seed == seeds[0]  # destruct and KL trajectories once, on the first seed
        kl = kl_every if first else 0
        runs.append(RunSpec(f"ct-seed{seed}", dataclasses.replace(ct, seed=seed, kl_every=kl), destruct=first))
        runs.append(RunSpec(f"st-seed{seed}", dataclasses.replace(st, seed=seed, kl_every=kl), destruct=first))
    for size in space_sizes:
        runs.append(RunSpec(f"st-space{size}-seed{seeds[0]}", dataclasses.replace(st, seed=seeds[0], space_size=size)))
    for other in lams:
        runs.append(RunSpec(f"st-lam{other:g}-seed{seeds[0]}", dataclasses.replace(st, seed=seeds[0], lam=other)))
    for i, plan in enumerate(alone_plans, 1):
        runs.append(RunSpec(f"alone{i}-seed{seeds[0]}", dataclasses.replace(ct, seed=seeds[0], plan=plan)))
    return tuple(runs)


def quick() -> Preset:
    """Every study on digits with MobileNetV3 x0.5, small enough for a 2-core laptop in minutes."""
    base = TrainConfig(model="mobilenet_v3_large", width_mult=0.5, dataset="digits", epochs=10,
                       bn_momentum=0.1, channels_last=True, kl_probe_size=200, kl_calib_size=256)
    runs = study_runs(base, lam=1.0, seeds=(0, 1), space_sizes=(6, 48), lams=(0.3, 3.0),
                      alone_plans=MBV3_ALONE_PLANS, kl_every=2)
    return Preset("quick", "digits, mobilenet_v3_large x0.5, 10 epochs: every study of the paper in minutes",
                  runs, calib_size=500, max_combos=50, train_images=1347)


def paper_cifar(name: str, model: str, dataset: str, lam: float, ct_hours: float, *,
                space_sizes: tuple[int, ...], alone_plans: tuple[str, ...]) -> Preset:
    """A CIFAR setting of the paper: Sec. 6 / Appendix C.2 recipe, 500 epochs, batch 64, lr 0.05, cosine."""
    base = TrainConfig(model=model, dataset=dataset, epochs=500, batch_size=64, lr=0.05, weight_decay=3e-5,
                       momentum=0.9)
    others = tuple(v for v in (1.0, 5.0, 10.0) if v != lam)
    runs = study_runs(base, lam=lam, seeds=(0,), space_sizes=space_sizes, lams=others,
                      alone_plans=alone_plans, kl_every=25)
    return Preset(name, f"{dataset}, {model}, the paper's settings (Sec. 6, Appendix C.2), lambda {lam:g}",
                  runs, calib_size=2000, train_images=50_000, ct_hours=ct_hours)


def paper_resnet50_imagenet() -> Preset:
    """ImageNet with ResNet-50 (Sec. 6): 100 epochs, batch 512, lr 0.2 cosine, weight decay 1e-4, lambda 1."""
    base = TrainConfig(model="resnet50", dataset="imagefolder", epochs=100, batch_size=512, lr=0.2,
                       weight_decay=1e-4, momentum=0.9, workers=8, eval_batch_size=256)
    runs = study_runs(base, lam=1.0, seeds=(0,), space_sizes=(), lams=(), alone_plans=(), kl_every=10)
    return Preset("paper-resnet50-imagenet", "ImageNet (--data-dir with train/ and val/), resnet50, lambda 1",
                  runs, calib_size=2000, train_images=1_281_167)


def presets() -> dict[str, Preset]:
    """Every preset by name."""
    return {
        "quick": quick(),
        # Hours of one CT run on the paper's GPUs: Table r4.
        "paper-mbv3-cifar10": paper_cifar("paper-mbv3-cifar10", "mobilenet_v3_large", "cifar10", 5.0, 16.77,
                                          space_sizes=(), alone_plans=()),
        "paper-mbv3-cifar100": paper_cifar("paper-mbv3-cifar100", "mobilenet_v3_large", "cifar100", 10.0, 16.91,
                                           space_sizes=(6, 48), alone_plans=MBV3_ALONE_PLANS),
        "paper-resnet50-cifar100": paper_cifar("paper-resnet50-cifar100", "resnet50", "cifar100", 10.0, 15.28,
                                               space_sizes=(), alone_plans=()),
        "paper-resnet50-imagenet": paper_resnet50_imagenet(),
    }


def get_preset(name: str) -> Preset:
    """The preset called `name`; unknown names are rejected with the valid ones."""
    known = presets()
    if name not in known:
        raise LoafingError(f"unknown preset {name!r}; valid choices: {', '.join(known)}")
    return known[name]
