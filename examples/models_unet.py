"""U-Net: odd input sizes under each ``align``, the error message, 3D volumes, the plain twin,
and a few training steps on a toy segmentation task.

    python examples/models_unet.py
"""

import torch
import torch.nn.functional as F

import skipkit as sk
from skipkit.models import create


def toy_batch(n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images of three one-pixel-wide lines each; the target marks the line pixels.

    Thin structures are what long skips are for: the bottleneck (4x4 at depth 3) cannot say
    where a one-pixel line is, the encoder's full-resolution features can.
    """
    images = 0.5 * torch.randn(n, 1, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(3):
            row, col = torch.randint(0, size, (2,)).tolist()
            if torch.rand(()) < 0.5:
                masks[i, row, :] = 1
            else:
                masks[i, :, col] = 1
    return images + masks.unsqueeze(1).float(), masks


def iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    pred = logits.argmax(1) == 1
    truth = masks == 1
    return float((pred & truth).sum() / (pred | truth).sum().clamp(min=1))


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 37, 45)  # not a multiple of 2**depth = 8
    for align in ("pad", "crop", "interpolate"):
        model = create("unet", in_channels=3, out_channels=2, depth=3, base_channels=8, align=align)
        print(f"align={align!r:<14} {tuple(x.shape)} -> {tuple(model.eval()(x).shape)}")
    try:
        create("unet", in_channels=3, out_channels=2, depth=3, align="error")(x)
    except sk.ShapeMismatchError as e:
        print("align='error':", str(e).split(". Fix:")[0])

    volume = create("unet", in_channels=1, out_channels=3, depth=2, base_channels=4, dims=3)
    print("3D:", tuple(volume.eval()(torch.randn(1, 1, 9, 10, 11)).shape))

    # Train a small U-Net and its plain twin (no long skips) on the same data.
    images, masks = toy_batch(16)
    test_images, test_masks = toy_batch(16)
    nets = {}
    for skip in (True, False):
        torch.manual_seed(1)
        net = create("unet", in_channels=1, out_channels=2, depth=3, base_channels=8, skip=skip)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(30):
            loss = F.cross_entropy(net(images), masks)
            opt.zero_grad()
            loss.backward()
            opt.step()
        nets[skip] = net.eval()
        with torch.no_grad():
            score = iou(net(test_images), test_masks)
        print(
            f"skip={skip!s:<5} after 30 steps: training loss {loss.item():.3f}, "
            f"test IoU {score:.2f}"
        )
    with torch.no_grad(), sk.skips_disabled(nets[True]):
        score = iou(nets[True](test_images), test_masks)
    print(f"the trained U-Net with its long skips switched off: test IoU {score:.2f}")


if __name__ == "__main__":
    main()
