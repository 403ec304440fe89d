"""The paper's studies as presets of `loafing reproduce`: which networks to train, and how to evaluate them.

Every preset covers the paper's studies for one setting: CT vs ST (Table 1, Fig. r2, Table r4),
restricted sampling spaces (Fig. 4, 5), sub-networks trained alone (Fig. 1, 4), layer deletion and
permutation (Fig. 6), KL trajectories (Fig. 7) and the λ ablation (Fig. r3).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from loafing.analyses import register_preset
from loafing.config import TrainConfig
from loafing.models import get_spec
from loafing.plans import ordered_plan
from loafing.reproduce import Preset, RunSpec

# Sub-networks trained alone: per-stage depths of the smallest and two in between (MobileNetV3: 2-3-4-2-3).
MBV3_ALONE_DEPTHS = ((1, 1, 1, 1, 1), (1, 2, 2, 1, 2), (2, 2, 3, 2, 2))


def alone_plan(model: str, depths: Sequence[int]) -> str:
    """The plan string of the ordered sub-network with these per-stage depths, to train alone (`--plan`)."""
    return str(ordered_plan(get_spec(model).layout(), tuple(depths)))


def study_runs(base: TrainConfig, *, lam: float, seeds: tuple[int, ...], space_sizes: tuple[int, ...],
               lams: tuple[float, ...], alone_depths: tuple[tuple[int, ...], ...],
               kl_every: int) -> tuple[RunSpec, ...]:
    """The runs of one setting: CT and ST per seed, restricted spaces, other λ, sub-networks alone."""
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
    for i, depths in enumerate(alone_depths, 1):
        plan = alone_plan(base.model, depths)
        runs.append(RunSpec(f"alone{i}-seed{seeds[0]}", dataclasses.replace(ct, seed=seeds[0], plan=plan)))
    return tuple(runs)


def quick() -> Preset:
    """Every study on digits with MobileNetV3 x0.5, small enough for a 2-core laptop in minutes."""
    base = TrainConfig(model="mobilenet_v3_large", width_mult=0.5, dataset="digits", epochs=10,
                       bn_momentum=0.1, channels_last=True, kl_probe_size=200, calib_size=256)
    runs = study_runs(base, lam=1.0, seeds=(0, 1), space_sizes=(6, 48), lams=(0.3, 3.0),
                      alone_depths=MBV3_ALONE_DEPTHS, kl_every=2)
    return Preset("quick", "digits, mobilenet_v3_large x0.5, 10 epochs: every study of the paper in minutes",
                  runs, calib_size=500, max_combos=50, train_images=1347)


def cifar10_cpu() -> Preset:
    """CT and ST of ResNet-20 on CIFAR-10 image files, sized to about an hour on a 2-core CPU."""
    # One CPU core trains ResNet-20 at about 170-250 images/s (ST-CT), so 6 epochs of all 50,000 images take
    # about 35 minutes for ST; measure (27 plans) and destruct (160 plans) on the 10,000 test images about 12 more.
    base = TrainConfig(model="resnet20-cifar", dataset="imagefolder", epochs=6, batch_size=64, lr=0.05,
                       weight_decay=3e-5, momentum=0.9, kl_probe_size=500, calib_size=500)
    runs = study_runs(base, lam=1.0, seeds=(0,), space_sizes=(), lams=(), alone_depths=(), kl_every=1)
    return Preset("cifar10-cpu", "CIFAR-10 as image files (--data-dir with train/ and test/), resnet20-cifar, "
                  "6 epochs: CT vs ST on real images in about an hour on a 2-core CPU", runs, calib_size=2000,
                  max_combos=200, train_images=50_000)


def paper_cifar(name: str, model: str, dataset: str, lam: float, ct_hours: float, *,
                space_sizes: tuple[int, ...], alone_depths: tuple[tuple[int, ...], ...]) -> Preset:
    """A CIFAR setting of the paper: Sec. 6 / Appendix C.2 recipe, 500 epochs, batch 64, lr 0.05, cosine."""
    base = TrainConfig(model=model, dataset=dataset, epochs=500, batch_size=64, lr=0.05, weight_decay=3e-5,
                       momentum=0.9)
    others = tuple(v for v in (1.0, 5.0, 10.0) if v != lam)
    runs = study_runs(base, lam=lam, seeds=(0,), space_sizes=space_sizes, lams=others,
                      alone_depths=alone_depths, kl_every=25)
    return Preset(name, f"{dataset}, {model}, the paper's settings (Sec. 6, Appendix C.2), lambda {lam:g}",
                  runs, calib_size=2000, train_images=50_000, ct_hours=ct_hours)


def paper_resnet50_imagenet() -> Preset:
    """ImageNet with ResNet-50 (Sec. 6): 100 epochs, batch 512, lr 0.2 cosine, weight decay 1e-4, lambda 1."""
    base = TrainConfig(model="resnet50", dataset="imagefolder", epochs=100, batch_size=512, lr=0.2,
                       weight_decay=1e-4, momentum=0.9, workers=8, eval_batch_size=256)
    runs = study_runs(base, lam=1.0, seeds=(0,), space_sizes=(), lams=(), alone_depths=(), kl_every=10)
    return Preset("paper-resnet50-imagenet", "ImageNet (--data-dir with train/ and val/), resnet50, lambda 1",
                  runs, calib_size=2000, train_images=1_281_167)


def lambda_ablation(base: TrainConfig, lams: Sequence[float], seeds: Sequence[int]) -> Preset:
    """The λ ablation (Appendix E, Fig. r3) on `base`'s model and data: CT per seed, ST per (λ, seed), measured."""
    runs = [RunSpec(f"ct-seed{seed}", dataclasses.replace(base, method="ct", seed=seed)) for seed in seeds]
    runs += [RunSpec(f"st-lam{lam:g}-seed{seed}", dataclasses.replace(base, method="st", lam=lam, seed=seed))
             for lam in lams for seed in seeds]
    lam_text = ", ".join(f"{lam:g}" for lam in lams)
    return Preset("lambda-ablation", f"{base.dataset}, {base.model}: CT and ST with λ {lam_text}, seeds "
                  f"{', '.join(map(str, seeds))}", tuple(runs), calib_size=2000)


register_preset("quick", quick)
register_preset("cifar10-cpu", cifar10_cpu)
# Hours of one CT run on the paper's GPUs: Table r4.
register_preset("paper-mbv3-cifar10", lambda: paper_cifar(
    "paper-mbv3-cifar10", "mobilenet_v3_large", "cifar10", 5.0, 16.77, space_sizes=(), alone_depths=()))
register_preset("paper-mbv3-cifar100", lambda: paper_cifar(
    "paper-mbv3-cifar100", "mobilenet_v3_large", "cifar100", 10.0, 16.91, space_sizes=(6, 48),
    alone_depths=MBV3_ALONE_DEPTHS))
register_preset("paper-resnet50-cifar100", lambda: paper_cifar(
    "paper-resnet50-cifar100", "resnet50", "cifar100", 10.0, 15.28, space_sizes=(), alone_depths=()))
register_preset("paper-resnet50-imagenet", paper_resnet50_imagenet)
