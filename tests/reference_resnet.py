"""An independent implementation of the option-A CIFAR ResNet from raw tensors: the reference that the
foreign-checkpoint and real-data tests check the toolkit's models and evaluator against."""
import torch
import torch.nn.functional as F

# The input normalization akamaster's checkpoints were trained with (their README), written out independently.
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def functional_resnet_cifar(sd, x, depth, stats, calibrate=False):
    """He et al.'s option-A CIFAR ResNet keeping the first `depth` blocks per stage, from raw tensors.

    With calibrate=True, BN uses batch statistics and appends them to `stats[name]`; otherwise it
    uses `stats[name]` = (mean, var).
    """
    def bn(name, h):
        if calibrate:
            stats.setdefault(name, []).append((h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=True)))
            mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
        else:
            mean, var = stats[name]
        h = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
        return h * sd[f"{name}.weight"].view(1, -1, 1, 1) + sd[f"{name}.bias"].view(1, -1, 1, 1)

    h = (x - MEAN) / STD
    h = F.relu(bn("bn1", F.conv2d(h, sd["conv1.weight"], padding=1)))
    for stage in range(1, 4):
        for j in range(depth):
            p = f"layer{stage}.{j}"
            stride = 2 if stage > 1 and j == 0 else 1
            out = F.relu(bn(f"{p}.bn1", F.conv2d(h, sd[f"{p}.conv1.weight"], stride=stride, padding=1)))
            out = bn(f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1))
            if stride == 2:
                extra = out.shape[1] - h.shape[1]
                h = F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, extra // 2, extra // 2))
            h = F.relu(out + h)
    return F.linear(h.mean(dim=(2, 3)), sd["linear.weight"], sd["linear.bias"])
