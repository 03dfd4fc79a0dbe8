"""DenseNets: torchvision weights, the memory-efficient mode, DenseNet-BC and its plain twin.

Offline by default: a randomly initialised torchvision DenseNet-121 is copied into skipkit's
and the outputs compared. ``--download`` loads torchvision's published ImageNet file by URL
(cached by ``torch.hub``, read with ``weights_only=True``; its legacy ``norm.1``-style keys are
renamed on the fly).

    python examples/models_densenet.py [--download]
"""

import argparse

import torch
import torch.nn.functional as F

import skipkit as sk
from skipkit.models import create
from skipkit.models.densenet import TORCHVISION_URLS, densenet121


def saved_megabytes(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Distinct storages autograd keeps for backward after one forward pass, in MB."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long)).backward()
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--download", action="store_true", help="fetch torchvision's weights")
    args = parser.parse_args()

    x = torch.randn(2, 3, 64, 64)
    try:
        import torchvision
    except ImportError:
        torchvision = None
    if torchvision is not None:
        reference = torchvision.models.densenet121(weights=None).eval()
        model = create("densenet121", weights=reference.state_dict()).eval()
        with torch.no_grad():
            diff = (model(x) - reference(x)).abs().max().item()
        print(f"skipkit densenet121 vs torchvision, same weights: max |diff| = {diff:.1e}")
    if args.download:
        url = TORCHVISION_URLS["densenet121"]
        model = create("densenet121", weights=url, progress=True).eval()
        print("loaded torchvision's ImageNet weights from", url)

    # Memory-efficient training: one saved tensor per dense layer, the rest recomputed.
    dense = densenet121(num_classes=10).train()
    full = saved_megabytes(dense, x)
    dense.memory_efficient = True
    lean = saved_megabytes(dense, x)
    print(f"saved for backward: {full:.1f} MB, memory_efficient=True: {lean:.1f} MB")

    # DenseNet-BC (L=100, k=12) for CIFAR, and its plain twin with the same weights.
    bc = create("densenet_bc", depth=100, growth_rate=12, num_classes=10).eval()
    n = sum(p.numel() for p in bc.parameters())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = bc(images)
        with sk.skips_disabled(bc):
            plain_logits = bc(images)
    assert logits.shape == plain_logits.shape == (2, 10)
    print(f"densenet_bc: {n / 1e6:.2f}M parameters; without its dense skips the logits change")
    print(f"  by up to {(logits - plain_logits).abs().max().item():.2f}")


if __name__ == "__main__":
    main()
