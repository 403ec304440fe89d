"""Is a CIFAR epoch bound by the model or by the data? Data time vs. step time on an image folder.

On a folder of small JPEG images (CIFAR-10 exported as files: train/<class>/*.jpg, test/<class>/*.jpg),
in one process: the time to index the folder, to decode every training image once (into the
in-memory uint8 tensor), then per batch the time the loader takes to deliver it (decoded images,
recipe augmentation, collation) against the time of one CT training step of a CIFAR ResNet on it.

    python benchmarks/data_loading.py --data-dir /tmp/cifar10 [--models resnet20-cifar resnet56-cifar]
                                      [--batch-size 128] [--batches 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from loafing.data import load_dataset, make_loader
from loafing.models import create_model, get_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="image folder with train/ and test/")
    parser.add_argument("--models", nargs="+", default=["resnet20-cifar", "resnet56-cifar"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per model")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}")

    start = time.perf_counter()
    data = load_dataset("imagefolder", args.data_dir, recipe=get_spec(args.models[0]).recipe)
    print(f"index {len(data.train)} training and {len(data.test)} test files: {time.perf_counter() - start:.2f} s")
    source = data.train.source
    start = time.perf_counter()
    for i in range(len(source)):
        source.image(i)
    decode = time.perf_counter() - start
    print(f"decode every training image once: {decode:.1f} s ({decode / len(source) * 1e6:.0f} us per image, "
          f"{source.memory.numel() / 2**20:.0f} MiB in memory)")

    loader = make_loader(data.train, args.batch_size, shuffle=True, drop_last=True)
    for name in args.models:
        model = create_model(name, data.num_classes).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        batches = iter(loader)
        data_times, step_times = [], []
        for i in range(args.batches + 2):  # the first two are warm-up
            begin = time.perf_counter()
            x, y = next(batches)
            loaded = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done = time.perf_counter()
            if i >= 2:
                data_times.append(loaded - begin)
                step_times.append(done - loaded)
        data_ms, step_ms = statistics.median(data_times) * 1e3, statistics.median(step_times) * 1e3
        print(f"{name}: data {data_ms:.1f} ms / batch, CT step {step_ms:.1f} ms / batch (medians of {args.batches}): "
              f"data is {data_ms / (data_ms + step_ms):.0%} of the epoch; about "
              f"{len(data.train) // args.batch_size * (data_ms + step_ms) / 1e3:.0f} s per epoch")


if __name__ == "__main__":
    main()
