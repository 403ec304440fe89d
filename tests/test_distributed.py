"""Beyond one process: DDP on the CPU with gloo (2 processes), torchrun's train / kill / resume / measure, mixed
precision, and the device-resident training data."""
import contextlib
import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chi2_contingency, chisquare
from torch.utils.data import DataLoader, DistributedSampler

from loafing.checkpoint import read_checkpoint
from loafing.config import TrainConfig, make_train_config
from loafing.device_data import DeviceBatches, ResidentSplit, crop_and_flip, resident_split
from loafing.distributed import World, current_world, process_device, process_group
from loafing.errors import LoafingError
from loafing.methods import ct_loss, st_loss_shared
from loafing.plan_tree import plan_shares
from loafing.plans import get_space, parse_plan
from loafing.recipes import RECIPES
from loafing.train import build_run, check_config, evaluate, record_kl, train, train_one_epoch

LOAFING = str(Path(sys.executable).parent / "loafing")
SMALL_RUN = dict(model="resnet20-cifar", dataset="digits", train_size=256, batch_size=64, lr=0.05, seed=3,
                 device="cpu", monitor_calib_size=100)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def become_rank(rank: int, world_size: int, port: int) -> None:
    """Give a spawned process the environment torchrun gives its workers."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))


# ---------------------------------------------------------------- DDP steps == one process on the same global batches


def _ddp_worker(rank: int, world_size: int, port: int, config: dict, out: str) -> None:
    """One of the 2 gloo processes: an epoch of DDP training, recording the ST plan of every step."""
    become_rank(rank, world_size, port)
    torch.set_num_threads(1)
    import loafing.methods as methods

    rule, plans = methods.SAMPLING_RULES["ordered"], []

    def recording(layout, rng):
        plans.append(str(rule(layout, rng)))
        return parse_plan(plans[-1])
    methods.SAMPLING_RULES["ordered"] = recording
    world, device = current_world(), torch.device("cpu")
    with process_group(world, device):
        run = build_run(TrainConfig(**config), world, device)
        train_one_epoch(run, 1, "test", progress=False)
    torch.save({"state": run.model.state_dict(), "plans": plans}, Path(out) / f"rank{rank}.pt")


# A library network (issue 22): a timm ViT at sub-layer granularity, its LayerNorms holding no running statistics.
LIBRARY_RUN = dict(model="timm:vit_tiny_patch16_224", granularity="unit",
                   model_args=dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2))


@pytest.mark.parametrize("method, model", [("ct", {}), ("st", {}), ("st", LIBRARY_RUN)], ids=["ct", "st", "st-vit"])
def test_two_ddp_processes_equal_one_process_averaging_each_ranks_gradients(method, model, tmp_path):
    config = dict(SMALL_RUN, method=method, out=str(tmp_path / "run"), **model)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), config, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # One process, independently: per step, rank r's half of the global batch (DistributedSampler's share) through
    # its own forward (so BN normalizes each half on its own, as per-rank BN does), gradients averaged over the
    # halves, one SGD step; the running BN statistics are rank 0's, which DDP broadcasts. One thread, as each
    # rank has: early training amplifies the last-bit differences of another thread count to 4e-3 in 4 steps.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = one_process_reference(config, method, ranks[0]["plans"])
    finally:
        torch.set_num_threads(threads)
    for key, value in expected.items():  # rank 0's: the state it writes
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for key in dict(build_run(TrainConfig(**config)).model.named_parameters()):  # rank 1's running statistics
        assert torch.equal(ranks[1]["state"][key], ranks[0]["state"][key]), key  # are its own until the next step
    moved = max((ranks[0]["state"][k].float() - v.float()).abs().max().item()
                for k, v in build_run(TrainConfig(**config)).model.state_dict().items())
    assert moved > 1e-3  # the steps changed the weights, so the comparison compares something
    if method == "st":
        assert ranks[0]["plans"] == ranks[1]["plans"] and len(ranks[0]["plans"]) == 4
        assert len(set(ranks[0]["plans"])) > 1  # the sampler really samples


def one_process_reference(config: dict, method: str, plans: list[str]) -> dict:
    """The state after the DDP epoch's steps, computed in this process from each rank's share of every batch."""
    run = build_run(TrainConfig(**config))
    model, lam = run.model, run.config.method_options.get("lam")  # ST's own option; CT has none
    model.train()
    loaders = []
    for r in range(2):
        sampler = DistributedSampler(run.data.train, num_replicas=2, rank=r, shuffle=True, seed=3, drop_last=True)
        sampler.set_epoch(1)
        loaders.append(list(DataLoader(run.data.train, batch_size=32, sampler=sampler, drop_last=True)))
    steps = len(loaders[0])
    assert steps == 4
    for step in range(steps):
        run.optimizer.zero_grad()
        for r in range(2):
            x, y = loaders[r][step]
            if r == 1:
                rank0_buffers = {k: v.clone() for k, v in model.named_buffers()}
            if method == "st":
                loss = st_loss_shared(model, x, y, parse_plan(plans[step]), lam).loss
            else:
                loss = ct_loss(model, x, y).loss
            (loss / 2).backward()
        for name, buffer in model.named_buffers():
            buffer.copy_(rank0_buffers[name])
        run.optimizer.step()
    return model.state_dict()


def _every_method_worker(rank: int, port: int, out: str) -> None:
    """One of 2 gloo processes: an epoch of every registered method, under DDP."""
    from loafing.methods import METHODS

    become_rank(rank, 2, port)
    torch.set_num_threads(1)
    world, device, states = current_world(), torch.device("cpu"), {}
    with process_group(world, device):
        for method in METHODS:
            run = build_run(TrainConfig(**{**SMALL_RUN, "train_size": 128}, method=method, out=out), world, device)
            train_one_epoch(run, 1, "test", progress=False)
            states[method] = dict(run.model.named_parameters())
    torch.save(states, Path(out) / f"rank{rank}.pt")


def test_every_registered_method_trains_under_ddp_with_the_same_weights_on_both_ranks(tmp_path):
    from loafing.methods import METHODS

    torch.multiprocessing.spawn(_every_method_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert set(ranks[0]) == set(METHODS)
    initial = dict(build_run(TrainConfig(**SMALL_RUN, out=str(tmp_path))).model.named_parameters())
    for method in METHODS:
        for key, value in ranks[0][method].items():
            assert torch.equal(value, ranks[1][method][key]), (method, key)
        assert not torch.equal(ranks[0][method]["net.conv1.weight"], initial["net.conv1.weight"]), method


def _agree_worker(rank: int, port: int, out: str) -> None:
    """One of 2 gloo processes: what `agree` hands each rank for rank 0's result, LoafingError and other failure."""
    from loafing.distributed import agree

    become_rank(rank, 2, port)
    world, seen = current_world(), []

    def fails(error: BaseException):
        def check():
            raise error
        return check
    with process_group(world, torch.device("cpu")):
        seen.append(agree(world, lambda: f"decided by rank {world.rank}"))
        for check in (fails(LoafingError("no run to resume")), fails(ValueError("a bug"))):
            try:
                agree(world, check)
            except BaseException as err:  # noqa: BLE001 - recording what each rank raises
                seen.append(f"{type(err).__name__}: {err}")
    Path(out, f"rank{rank}.txt").write_text("\n".join(seen))


def test_what_rank_0_decides_or_meets_reaches_every_rank(tmp_path):
    torch.multiprocessing.spawn(_agree_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0.txt").read_text().splitlines() == [
        "decided by rank 0", "LoafingError: no run to resume", "ValueError: a bug"]
    assert (tmp_path / "rank1.txt").read_text().splitlines() == [
        "decided by rank 0", "AgreedError: no run to resume", "AgreedError: rank 0 failed: ValueError: a bug"]


def _evaluating_worker(rank: int, port: int, config: dict, out: str) -> None:
    """One of 2 gloo processes: train an epoch with KL records, noting which plans this rank evaluated."""
    import loafing.plan_tree
    import loafing.train

    become_rank(rank, 2, port)
    torch.set_num_threads(1)
    evaluated: list[str] = []
    kl_share, running_share = loafing.plan_tree.evaluate_plans, loafing.train.predict

    def noting_plans(model, plans, *args, **kwargs):
        evaluated.extend(str(p) for p in plans)
        return kl_share(model, plans, *args, **kwargs)

    def noting_running(model, plan, *args, **kwargs):
        evaluated.append("running BN")
        return running_share(model, plan, *args, **kwargs)
    loafing.plan_tree.evaluate_plans, loafing.train.predict = noting_plans, noting_running
    loafing.train.evaluate_plans = noting_plans
    train(TrainConfig(**config), progress=False)
    Path(out, f"rank{rank}.txt").write_text("\n".join(evaluated))


def test_under_ddp_each_epochs_evaluations_are_shared_out_and_equal_one_process_on_the_same_weights(tmp_path):
    config = make_train_config({**SMALL_RUN, "train_size": 128, "method": "st", "epochs": 1, "kl_every": 1,
                                "kl_probe_size": 100, "out": str(tmp_path / "run")})
    torch.multiprocessing.spawn(_evaluating_worker, args=(free_port(), dataclasses.asdict(config), str(tmp_path)),
                                nprocs=2, join=True)
    shares = [set((tmp_path / f"rank{r}.txt").read_text().splitlines()) for r in range(2)]
    plans = {str(p) for p in get_space("ordered", build_run(config).model.layout)}
    assert "running BN" in shares[0] and "running BN" not in shares[1]  # rank 0 holds the checkpoint's buffers
    assert len(shares[1] & plans) >= 10 and len(shares[0] & plans) >= 10  # both ranks evaluate KL plans
    assert (shares[0] | shares[1]) >= plans

    # One process on the weights rank 0 wrote: the same KL rows and the same per-epoch test accuracy.
    run = build_run(dataclasses.replace(config, world_size=1))
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    run.model.load_state_dict(state["model"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected_kl, expected_eval = record_kl(run), evaluate(run)
    finally:
        torch.set_num_threads(threads)
    written = pd.read_csv(tmp_path / "run" / "kl_trajectory.csv")
    assert len(written) == len(plans) == 27
    pd.testing.assert_frame_equal(written[list(expected_kl.columns)].reset_index(drop=True),
                                  expected_kl.reset_index(drop=True), check_dtype=False, rtol=1e-12, atol=0)
    log = pd.read_csv(tmp_path / "run" / "train_log.csv").iloc[0]
    for name, value in expected_eval.items():
        assert log[name] == pytest.approx(value, rel=1e-12), name


# ---------------------------------------------------------------- torchrun: train, kill, resume, measure


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", LOAFING, *args]


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = ["train", "--model", "resnet20-cifar", "--dataset", "digits", "--method", "st", "--device", "cpu",
         "--train-size", "128", "--epochs", "2", "--kl-every", "1", "--kl-probe-size", "100",
         "--monitor-calib-size", "100", "--quiet"]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a crash of the machine would stop them (torchrun's
    workers run in sessions of their own, so killing its process group would leave them running)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


@pytest.mark.parametrize("against_uninterrupted", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_torchrun_trains_is_killed_resumes_and_measures_like_one_process(against_uninterrupted, tmp_path, run_cli):
    cut = tmp_path / "cut"
    victim = subprocess.Popen(torchrun(*TRAIN, "--out", str(cut)), env=TORCHRUN_ENV, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (cut / "checkpoint.pt").exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_tree(victim.pid)
    victim.wait()
    assert read_checkpoint(cut / "checkpoint.pt")["epoch"] == 1  # killed mid-run: there is something to resume
    assert '"world_size": 2' in (cut / "config.json").read_text()
    resumed = subprocess.run(torchrun("train", "--resume", str(cut), "--quiet"), env=TORCHRUN_ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("test top-1") == 1  # rank 0 reports, once
    assert read_checkpoint(cut / "checkpoint.pt")["epoch"] == 2
    assert list(pd.read_csv(cut / "train_log.csv")["epoch"]) == [1, 2]
    assert pd.read_csv(cut / "kl_trajectory.csv")["epoch"].value_counts().to_dict() == {1: 27, 2: 27}
    if against_uninterrupted:
        whole = tmp_path / "whole"
        subprocess.run(torchrun(*TRAIN, "--out", str(whole)), check=True, env=TORCHRUN_ENV, capture_output=True)
        a, b = read_checkpoint(whole / "checkpoint.pt"), read_checkpoint(cut / "checkpoint.pt")
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), key

    measure = ["measure", "--ckpt", str(cut / "checkpoint.pt"), "--calib-size", "100", "--quiet"]
    assert run_cli(*measure, "--out", tmp_path / "one.csv")[0] == 0
    subprocess.run(torchrun(*measure, "--out", str(tmp_path / "two.csv")), check=True, env=TORCHRUN_ENV,
                   capture_output=True)
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert len(pd.read_csv(tmp_path / "two.csv")) == 27
    destruct = ["destruct", "--mode", "delete-one", "--ckpt", str(cut / "checkpoint.pt"), "--calib-size", "100",
                "--quiet"]
    assert run_cli(*destruct, "--out", tmp_path / "d1.csv")[0] == 0
    subprocess.run(torchrun(*destruct, "--out", str(tmp_path / "d2.csv")), check=True, env=TORCHRUN_ENV,
                   capture_output=True)
    assert (tmp_path / "d2.csv").read_bytes() == (tmp_path / "d1.csv").read_bytes()
    assert len(pd.read_csv(tmp_path / "d2.csv")) == 8  # the intact network and its 7 deletable layers

    # one process may not resume what two trained: the global batch would be cut differently
    code, _, err = run_cli("train", "--resume", cut)
    assert code == 2 and "trained by 2 process(es)" in err and len(err.strip().splitlines()) == 1


def test_plans_are_shared_out_as_contiguous_runs_of_prefix_order():
    from loafing.models import create_model

    plans = get_space("ordered", create_model("resnet20-cifar", 10).layout)
    shares = plan_shares(plans, 3)
    assert sorted(i for share in shares for i in share) == list(range(len(plans)))
    assert {len(share) for share in shares} == {9}
    in_order = sorted(range(len(plans)), key=lambda i: plans[i].sequence())
    assert [i for share in shares for i in share] == in_order
    # ResNet-20's 27 ordered plans in 3 shares: each share is one first-stage depth, a whole subtree
    assert [{plans[i].depths[0] for i in share} for share in shares] == [{3}, {2}, {1}]
    assert plan_shares(plans[:1], 2) == [[], [0]]


def test_settings_that_do_not_fit_several_processes_are_refused():
    config = TrainConfig(**{**SMALL_RUN, "batch_size": 63}, method="st", out="x")
    with pytest.raises(LoafingError, match="global batch; it must split evenly over the 2 processes"):
        check_config(config, World(0, 2, 0))
    config = TrainConfig(**SMALL_RUN, method="st", sync_bn=True, out="x")
    with pytest.raises(LoafingError, match="--sync-bn needs GPUs"):
        check_config(config, World(0, 2, 0), torch.device("cpu"))
    with pytest.raises(LoafingError, match="pass --st-step simple with --sync-bn"):
        check_config(config, World(0, 2, 0), torch.device("cuda"))
    check_config(make_train_config({**SMALL_RUN, "device": "cuda", "method": "st", "st_step": "simple",
                                    "sync_bn": True, "out": "x"}), World(0, 2, 0), torch.device("cuda"))
    with pytest.raises(LoafingError, match="each process takes the GPU of its local rank; pass --device cuda"):
        process_device(World(1, 2, 1), torch.device("cuda", 1))
    assert process_device(World(1, 2, 1), torch.device("cpu")) == torch.device("cpu")


# ---------------------------------------------------------------- mixed precision


def first_conv_output_dtype(config: TrainConfig) -> torch.dtype:
    run = build_run(config)
    seen = []
    conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = train_one_epoch(run, 1, "test", progress=False)
    assert torch.isfinite(torch.tensor(losses["loss"]))
    return seen[0]


def test_amp_bf16_autocasts_the_training_forward_on_the_cpu(tmp_path):
    assert first_conv_output_dtype(TrainConfig(**SMALL_RUN, method="st", out=str(tmp_path))) == torch.float32
    assert first_conv_output_dtype(TrainConfig(**SMALL_RUN, method="st", amp="bf16", out=str(tmp_path))) == \
        torch.bfloat16
    log = train(TrainConfig(**{**SMALL_RUN, "train_size": None}, method="st", amp="bf16", epochs=2,
                            out=str(tmp_path / "bf16")), progress=False)
    assert log["test_top1_recalibrated"].iloc[-1] > 80  # it learns digits (chance: 10)


def test_amp_fp16_scales_the_loss_and_checkpoints_the_scaler(tmp_path):
    out = tmp_path / "fp16"
    with pytest.warns(UserWarning, match="bf16 is the CPU's"):  # fp16 on a CPU is slow: 8 steps of 4 images
        train(TrainConfig(**{**SMALL_RUN, "train_size": 32, "batch_size": 4}, method="ct", amp="fp16", epochs=1,
                          out=str(out)), progress=False)
    state = read_checkpoint(out / "checkpoint.pt")
    # 8 steps from the initial scale 2^16: each overflow halves the scale and skips its step, the others count
    halvings = 16 - math.log2(state["scaler"]["scale"])
    assert halvings == int(halvings) and 0 < halvings < 8  # it overflowed at first, as fp16 does, then stepped
    assert state["scaler"]["_growth_tracker"] == 8 - halvings
    initial = build_run(TrainConfig(**SMALL_RUN, method="ct", out=str(out))).model.state_dict()
    assert not torch.equal(state["model"]["net.conv1.weight"], initial["net.conv1.weight"])


def test_under_fp16_a_step_whose_loss_overflowed_is_skipped_and_left_out_of_the_epoch_means(tmp_path):
    run = build_run(TrainConfig(**{**SMALL_RUN, "train_size": 16, "batch_size": 4}, method="ct", amp="fp16",
                                out=str(tmp_path)))
    real, calls, losses = run.trained.forward, {"n": 0}, []

    def overflows_once(x, y):
        loss, ce, kl = real(x, y)
        calls["n"] += 1
        if calls["n"] == 2:
            loss = loss * float("inf")
        losses.append(loss.item())
        return loss, ce, kl
    run.trained.forward = overflows_once
    epoch = train_one_epoch(run, 1, "test", progress=False)
    assert calls["n"] == 4 and math.isinf(losses[1])
    assert epoch["examples"] == 16
    assert epoch["loss"] == pytest.approx((losses[0] + losses[2] + losses[3]) / 3)
    for p in run.model.parameters():
        assert torch.isfinite(p).all()


# ---------------------------------------------------------------- device-resident data


def identify(image: torch.Tensor, original: torch.Tensor) -> tuple[int, int, bool]:
    """Which (top, left, flip) of the pad-4 crops of `original` a uint8 image is; fails if none."""
    padded = F.pad(original, (4, 4, 4, 4))
    matches = [(top, left, flip) for top in range(9) for left in range(9) for flip in (False, True)
               if torch.equal(image, (lambda c: c.flip(-1) if flip else c)(padded[:, top:top + 32, left:left + 32]))]
    assert len(matches) == 1
    return matches[0]


def test_device_crop_and_flip_draw_what_the_cpu_recipe_draws():
    original = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    n = 1620
    cpu_recipe, _ = RECIPES["cifar"].transforms(32)
    torch.manual_seed(1)
    cpu = [identify((cpu_recipe(original) * 255).round().to(torch.uint8), original) for _ in range(n)]
    batch = crop_and_flip(original.expand(n, -1, -1, -1), torch.Generator().manual_seed(2))
    device = [identify(image, original) for image in batch]
    cells = [(t, l, f) for t in range(9) for l in range(9) for f in (False, True)]
    counts = [[draws.count(c) for c in cells] for draws in (cpu, device)]
    assert chisquare(counts[1]).pvalue > 1e-3  # uniform over the 162 crops, as the recipe's
    assert chi2_contingency(counts).pvalue > 1e-3  # and distributed as the CPU path's draws


def test_device_batches_give_each_rank_its_share_of_one_permutation_per_epoch():
    n = 100
    split = ResidentSplit(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n), augment=False)
    ranks = [DeviceBatches(split, 10, torch.device("cpu"), seed=5, rank=r, world_size=2) for r in range(2)]
    orders = []
    for epoch in (1, 2):
        for batches in ranks:
            batches.sampler.set_epoch(epoch)
        seen = [[int(x) for images, labels in batches for x in labels] for batches in ranks]
        assert len(seen[0]) == len(seen[1]) == 50 and sorted(seen[0] + seen[1]) == list(range(n))
        assert [int(v) for images, _ in ranks[0] for v in images.flatten()] == seen[0]  # images travel with labels
        orders.append(seen[0])
    assert orders[0] != orders[1]


def test_training_with_the_data_on_the_device_learns_digits(tmp_path):
    log = train(TrainConfig(**{**SMALL_RUN, "train_size": None}, method="ct", data_on_device=True, epochs=2,
                            out=str(tmp_path / "run")), progress=False)
    assert log["test_top1_recalibrated"].iloc[-1] > 80


def test_data_on_device_refuses_images_it_would_have_to_resize(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / split / label / "x.png")
    from loafing.data import load_dataset

    data = load_dataset("imagefolder", str(tmp_path), recipe="imagenet")
    with pytest.raises(LoafingError, match="--data-on-device needs small images used at their stored size"):
        resident_split(data.train, "imagenet", data.image_size)
    assert resident_split(load_dataset("imagefolder", str(tmp_path), recipe="cifar").train, "cifar", 32).augment


@pytest.mark.parametrize("rank", [0, 1])
def test_commands_that_run_whole_studies_refuse_torchrun_and_say_so_once(rank, run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, err = run_cli("reproduce", "--preset", "quick", "--out", tmp_path / "q")
    assert code == 2 and out == ""
    assert err == ("loafing: error: `loafing reproduce` runs in one process; under torchrun run `loafing train`, "
                   "`loafing measure` or `loafing destruct`\n" if rank == 0 else "")
    assert not (tmp_path / "q").exists()


def test_measure_under_torchrun_refuses_to_download_in_every_process(run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli("measure", "--ckpt", tmp_path / "x.pt", "--dataset", "cifar10", "--download",
                           "--out", tmp_path / "m.csv")
    assert code == 2 and err.startswith("loafing: error: --download under torchrun") and err.count("\n") == 1


def random_image_folder(root: Path, n: int = 64) -> Path:
    """train/ and test/ folders of random 32x32 PNGs in two classes."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for i in range(n):
            folder = root / split / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator)
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


def test_an_interrupted_run_with_its_data_on_the_device_resumes_with_the_same_crops(tmp_path, interrupted_training):
    data_dir = random_image_folder(tmp_path / "images")
    base = dict(model="resnet20-cifar", dataset="imagefolder", data_dir=str(data_dir), data_on_device=True,
                batch_size=16, epochs=2, device="cpu", monitor_calib_size=16, method="st")
    whole = train(TrainConfig(**base, out=str(tmp_path / "whole")), progress=False)
    interrupted_training(TrainConfig(**base, out=str(tmp_path / "cut")), epoch=2)
    resumed = train(TrainConfig(**base, out=str(tmp_path / "cut")), progress=False, resume=True)
    assert list(resumed["epoch"]) == [1, 2]
    a = read_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]
    b = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["loss"].tolist() == resumed["loss"].tolist()


def test_a_resident_subset_decodes_only_its_own_images(tmp_path):
    from torch.utils.data import Subset

    from loafing.data import load_dataset

    data = load_dataset("imagefolder", str(random_image_folder(tmp_path)), recipe="cifar")
    split = resident_split(Subset(data.train, [5, 3, 40]), "cifar", 32)
    assert int(data.train.source.decoded.sum()) == 3
    source = data.train.source
    assert torch.equal(split.images[1], source.image(3))
    assert split.labels.tolist() == [int(Path(source.files[i]).parent.name[1:]) for i in (5, 3, 40)]
