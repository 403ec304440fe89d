"""The staged view of a network: stem -> stages of blocks -> head, run by a plan."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from loafing.conv import crop_conv_kernels
from loafing.errors import LoafingError
from loafing.plans import Layout, Plan, split_at_fixed_blocks, validate_plan
from loafing.segments import make_segment_aware


class StagedModel(nn.Module):
    """A residual network seen as stem, body blocks and head; `model(x, plan)` runs the plan's blocks.

    The wrapped network lives in `self.net` with its original parameter names, so foreign state
    dicts (torchvision, akamaster CIFAR ResNets) load into `model.net` unchanged. A network whose
    stem and head are modules of `net` passes them as `stem` and `head`; otherwise a subclass defines
    `forward_stem`, `head`, `stem_modules` and `head_modules`.
    """

    granularity = "block"  # what a step of a plan is: a residual block, or ("unit") a transformer block's unit

    def __init__(self, net: nn.Module, blocks: Sequence[nn.Module], stage_sizes: Sequence[int],
                 skippable: Sequence[bool], stem: nn.Module | None = None, head: nn.Module | None = None,
                 prefix_only: bool = False) -> None:
        super().__init__()
        self.net = make_segment_aware(crop_conv_kernels(net))
        # Plain tuples keep these out of the state dict: they are already registered under `net`.
        self._blocks = tuple(blocks)
        self._stem_and_head = (stem, head)
        stages, start = [], 1
        for n in stage_sizes:
            stages.append(tuple(range(start, start + n)))
            start += n
        layout = Layout(tuple(stages), frozenset(i + 1 for i, s in enumerate(skippable) if s), prefix_only)
        self.layout = split_at_fixed_blocks(layout)
        # Identity until set: create_model sets the spec's default, training the data set's, loading the checkpoint's.
        self.register_buffer("input_mean", torch.zeros(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.ones(1, 3, 1, 1), persistent=False)
        self._valid_plans: set[Plan] = {self.layout.main_plan}

    def block(self, index: int) -> nn.Module:
        """The body block with 1-based global index `index`."""
        return self._blocks[index - 1]

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the per-channel input normalization the weights expect (inputs arrive in [0, 1])."""
        self.input_mean.copy_(torch.tensor(mean).view(1, -1, 1, 1))
        self.input_std.copy_(torch.tensor(std).view(1, -1, 1, 1))

    @property
    def normalization(self) -> dict[str, list[float]]:
        """The input normalization as plain lists, for checkpoints."""
        return {"mean": self.input_mean.flatten().tolist(), "std": self.input_std.flatten().tolist()}

    def check_plan(self, plan: Plan) -> None:
        """Raise LoafingError if `plan` is not valid for this model."""
        if plan not in self._valid_plans:
            validate_plan(plan, self.layout)
            self._valid_plans.add(plan)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize the input and run the stem."""
        return self.forward_stem((x - self.input_mean) / self.input_std)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem on a normalized input."""
        return self._stem_and_head[0](x)

    def stem_modules(self) -> list[nn.Module]:
        """The modules the stem runs (for per-prefix BN statistics)."""
        return [self._stem_and_head[0]]

    def head_modules(self) -> list[nn.Module]:
        """The modules the head runs (for per-prefix BN statistics)."""
        return [self._stem_and_head[1]]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Features after the last stage -> logits."""
        return self._stem_and_head[1](x)

    def residual(self, index: int, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 shortcut: bool = True) -> torch.Tensor:
        """Skippable block `index` taken apart: `branch` applied to its residual branch's output (stochastic
        depth's drop and scale), and its identity shortcut added or not (raw plans run the branch alone)."""
        raise LoafingError(f"{type(self).__name__} cannot run a block's residual branch on its own; methods and "
                           "plans that need it (raw sampling, stochastic depth) are not available for it")

    def run_step(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """One step of a plan: block `step`, or for a negative step its residual branch alone."""
        return self._blocks[step - 1](x) if step > 0 else self.residual(-step, x, shortcut=False)

    def forward(self, x: torch.Tensor, plan: Plan | None = None) -> torch.Tensor:
        """Logits of the network that runs `plan` (the main network if None)."""
        plan = plan or self.layout.main_plan
        self.check_plan(plan)
        x = self.stem(x)
        for b in plan.sequence():
            x = self.run_step(b, x)
        return self.head(x)
