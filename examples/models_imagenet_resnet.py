"""ImageNet ResNets with torchvision's keys: load torchvision weights, ResNet-D, fine-tuning.

Without arguments it runs offline: it copies a randomly initialised torchvision ResNet-50 into
skipkit's and checks the outputs agree. With ``--download`` it loads torchvision's published
ImageNet weights by URL (cached by ``torch.hub``, read with ``weights_only=True``).

    python examples/models_imagenet_resnet.py [--download]
"""

import argparse

import torch

import skipkit as sk
from skipkit.models import create

# torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url (80.9% top-1)
TORCHVISION_RESNET50 = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--download", action="store_true", help="fetch torchvision's weights")
    args = parser.parse_args()

    try:
        import torchvision
    except ImportError:
        torchvision = None
    x = torch.randn(1, 3, 64, 64)
    model = create("resnet50").eval()
    if torchvision is not None:
        reference = torchvision.models.resnet50(weights=None).eval()
        model = create("resnet50", weights=reference.state_dict()).eval()
        with torch.no_grad():
            diff = (model(x) - reference(x)).abs().max().item()
        print(f"skipkit resnet50 vs torchvision, same weights: max |diff| = {diff:.2e}")
    if args.download:
        model = create("resnet50", weights=TORCHVISION_RESNET50, progress=True).eval()
        print("loaded torchvision's ImageNet weights from", TORCHVISION_RESNET50)

    # Fine-tuning: a 10-class head keeps its fresh init, every other weight is loaded.
    tuned = create("resnet50", weights=model.state_dict(), num_classes=10, drop_path=0.05)
    print("fine-tuning head:", tuned.fc)

    resnet_d = create("resnet50d")
    print("ResNet-50-D shortcut of stage 2:", resnet_d.layer2[0].downsample)

    with torch.no_grad(), sk.skips_disabled(model):
        print("the same net without its skips:", tuple(model(x).shape))


if __name__ == "__main__":
    main()
