"""The appendix's comparison of training methods (Appendix F.1: Table r3, Figs. r4-r8) and ST's sampling rules
(Sec. 3.3, Fig. 3), as presets of `loafing reproduce`."""
from __future__ import annotations

import dataclasses

from loafing.analyses import register_preset
from loafing.config import TrainConfig
from loafing.reproduce import Preset, RunSpec

BASELINES = ("stochastic-depth", "self-distillation", "layer-supervision", "stage-supervision")
OTHER_SAMPLING_RULES = ("stochastic", "raw")


def method_runs(base: TrainConfig, *, lam: float, seeds: tuple[int, ...]) -> tuple[RunSpec, ...]:
    """CT, ST and every baseline per seed (destructed on the first seed), and ST with each other sampling rule."""
    runs = []
    for seed in seeds:
        first = seed == seeds[0]
        for method in ("ct", "st", *BASELINES):
            config = dataclasses.replace(base, method=method, seed=seed, lam=lam if method == "st" else base.lam)
            runs.append(RunSpec(f"{method}-seed{seed}", config, destruct=first))
        for rule in OTHER_SAMPLING_RULES:
            config = dataclasses.replace(base, method="st", lam=lam, sampling=rule, seed=seed)
            runs.append(RunSpec(f"st-{rule}-seed{seed}", config))
    return tuple(runs)


def appendix_quick() -> Preset:
    """Table r3, Figs. r4-r8 and Fig. 3 on digits with MobileNetV3 x0.5, the quick preset's settings."""
    base = TrainConfig(model="mobilenet_v3_large", width_mult=0.5, dataset="digits", epochs=10,
                       bn_momentum=0.1, channels_last=True, calib_size=256)
    return Preset("appendix-quick", "digits, mobilenet_v3_large x0.5, 10 epochs: CT, ST, the appendix's four "
                  "baselines and ST's three sampling rules, 2 seeds, in minutes", method_runs(base, lam=1.0, seeds=(0, 1)),
                  calib_size=500, max_combos=50, train_images=1347)


def paper_mbv3_cifar100_appendix() -> Preset:
    """Appendix F.1's setting: MobileNetV3 on CIFAR-100 with the Sec. 6 recipe, every method, λ 10 for ST."""
    base = TrainConfig(model="mobilenet_v3_large", dataset="cifar100", epochs=500, batch_size=64, lr=0.05,
                       weight_decay=3e-5, momentum=0.9)
    return Preset("paper-mbv3-cifar100-appendix", "cifar100, mobilenet_v3_large, the paper's settings: CT, ST (λ 10), "
                  "the appendix's four baselines and ST's other sampling rules", method_runs(base, lam=10.0, seeds=(0,)),
                  calib_size=2000, train_images=50_000, ct_hours=16.91)


register_preset("appendix-quick", appendix_quick)
register_preset("paper-mbv3-cifar100-appendix", paper_mbv3_cifar100_appendix)
