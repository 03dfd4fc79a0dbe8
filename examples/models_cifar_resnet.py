"""CIFAR ResNets of He et al. 2015 and their plain twins: sizes, one switch, a few SGD steps.

Prints the parameter counts next to the paper's Table 6, shows that ``skips_disabled`` turns a
ResNet into its plain twin with the same weights, and trains ResNet-20 and plain-20 for a few
steps on random CIFAR-shaped data (use ``skipkit degradation`` for the real experiment).

    python examples/models_cifar_resnet.py
"""

import torch
import torch.nn.functional as F

import skipkit as sk
from skipkit.models import create

PAPER = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}


def main() -> None:
    print(f"{'model':<12}{'params':>12}{'paper':>8}")
    for depth, paper in PAPER.items():
        n = sum(p.numel() for p in create(f"resnet{depth}").parameters())
        print(f"resnet{depth:<6}{n:>12,}{paper:>8}")

    torch.manual_seed(0)
    residual = create("resnet20").eval()
    plain = create("resnet20", skip=False).eval()
    plain.load_state_dict(residual.state_dict())  # option A: the very same keys
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), sk.skips_disabled(residual):
        same = torch.equal(residual(x), plain(x))
    print("skips_disabled(resnet20) == plain-20 with the same weights:", same)

    images, labels = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    for name, model in (
        ("resnet20", create("resnet20")),
        ("plain20", create("resnet20", skip=False)),
    ):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        for _ in range(5):
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"{name}: loss after 5 steps on one random batch {loss.item():.3f}")

    seq = create("resnet56", dims=1, in_channels=1, num_classes=10)  # MNIST-1D: (N, 1, 40)
    print("resnet56, dims=1:", tuple(seq(torch.randn(2, 1, 40)).shape))


if __name__ == "__main__":
    main()
