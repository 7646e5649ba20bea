"""Figures for docs/deepen.md: ``python -m benchmarks.deepen_figure`` (from the repository root).

Writes docs/figures/deepen_constructions.png (the identity kernels and the zeroed branch) and
docs/figures/deepen_torchvision.png (measured error and added parameters of ``deepen(model)``
on torchvision models, and how far the new weights move in a few SGD steps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

import autogrow  # noqa: E402
from autogrow.testing import randomize_constant_tensors  # noqa: E402
from autogrow.transforms.identity import identity_conv  # noqa: E402
from autogrow.verify import compare, run  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures"
MODELS = [
    "resnet18", "resnet50", "resnext50_32x4d", "vgg11_bn", "alexnet", "mobilenet_v2",
    "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "densenet121", "regnet_y_400mf",
    "shufflenet_v2_x1_0", "googlenet", "vit_b_16", "swin_t",
]  # fmt: skip


def constructions() -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    dense = identity_conv(4, 2, 3).weight.detach()  # (out, in, 3, 3)
    grid = dense.permute(0, 2, 1, 3).reshape(4 * 3, 4 * 3)
    axes[0].imshow(grid, cmap="Greys", vmin=0, vmax=1)
    axes[0].set_title("3x3 conv = I (4 channels)\nrow block = out, column block = in")
    for k in range(1, 4):
        axes[0].axhline(3 * k - 0.5, color="tab:red", lw=0.8)
        axes[0].axvline(3 * k - 0.5, color="tab:red", lw=0.8)
    dw = identity_conv(4, 2, 3, depthwise=True).weight.detach()  # (4, 1, 3, 3)
    axes[1].imshow(dw[:, 0].permute(1, 0, 2).reshape(3, 12), cmap="Greys", vmin=0, vmax=1)
    axes[1].set_title("depthwise 3x3 = I (groups=4)\none delta per channel")
    for k in range(1, 4):
        axes[1].axvline(3 * k - 0.5, color="tab:red", lw=0.8)
    ax = axes[2]
    ax.axis("off")
    ax.set_title("zeroed residual block (Bottleneck)")
    boxes = [
        ("x", 0.9),
        ("conv1 1x1 / bn1 / relu", 0.75),
        ("conv2 3x3 / bn2 / relu", 0.6),
        ("conv3 1x1: W = 0, b = 0", 0.45),
        ("bn3: bias = 0, mean = 0 (weight kept)", 0.3),
        ("relu(x + 0) = x", 0.1),
    ]
    for text, y in boxes:
        zero = "0" in text and "conv1" not in text
        ax.text(
            0.5, y, text, ha="center", va="center", fontsize=9,
            bbox=dict(boxstyle="round", fc="mistyrose" if zero else "whitesmoke"),
        )  # fmt: skip
    ax.annotate("", (0.93, 0.13), (0.93, 0.87), arrowprops=dict(arrowstyle="->", color="tab:blue"))
    ax.text(0.96, 0.5, "skip", rotation=90, va="center", color="tab:blue")
    fig.tight_layout()
    fig.savefig(OUT / "deepen_constructions.png", dpi=110)
    plt.close(fig)


def measured(names: list[str]) -> None:
    rows = []
    for name in names:
        torch.manual_seed(0)
        model = randomize_constant_tensors(torchvision.models.get_model(name)).eval()
        side = 224 if name.startswith(("vit", "swin")) else 64
        x = (torch.randn(2, 3, side, side),)
        deep = autogrow.deepen(model, example_inputs=x)
        fresh = (torch.randn_like(x[0]),)
        err = compare(run(deep, fresh), run(model, fresh)).max_error
        added = sum(p.numel() for p in deep.parameters()) / sum(
            p.numel() for p in model.parameters()
        )
        rows.append((name, err, 100 * (added - 1)))
        print(f"{name:22s} max rel err {err:.2e}  +{100 * (added - 1):.1f}% parameters")
    # learning: how far the new layers move in 20 SGD steps (resnet18, plain MLP)
    torch.manual_seed(0)
    r18 = randomize_constant_tensors(torchvision.models.resnet18())
    x = torch.randn(4, 3, 64, 64)
    deep = autogrow.deepen(r18, after="layer4", example_inputs=(x,))
    new = deep.layer4[-1]
    mlp = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3)
    )  # fmt: skip
    xm = torch.randn(64, 6)
    dm = autogrow.deepen(mlp, after="1", example_inputs=(xm,))
    traces = {
        "resnet18 new block conv2 (zeroed) |W|": [],
        "resnet18 new block conv1 |W - W0|": [],
        "MLP new Linear |W - I|": [],
        "MLP new PReLU |a - 1|": [],
    }
    w0 = new.conv1.weight.detach().clone()
    for model, inp in ((deep, x), (dm, xm)):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.02)
        target = torch.randn_like(model(inp))
        for _ in range(20):
            opt.zero_grad()
            F.mse_loss(model(inp), target).backward()
            opt.step()
            if model is deep:
                traces["resnet18 new block conv2 (zeroed) |W|"].append(new.conv2.weight.norm())
                traces["resnet18 new block conv1 |W - W0|"].append((new.conv1.weight - w0).norm())
            else:
                traces["MLP new Linear |W - I|"].append((dm[2].weight - torch.eye(16)).norm())
                traces["MLP new PReLU |a - 1|"].append((dm[3].weight - 1).norm())

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ax = axes[0]
    ys = range(len(rows))
    ax.barh(ys, [r[2] for r in rows], color="tab:green")
    ax.set_yticks(list(ys), [f"{r[0]}  (err {r[1]:.0e})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("parameters added by deepen(model) [%]")
    ax.set_title("torchvision: default deepen, max relative error (eval)")
    ax = axes[1]
    for label, values in traces.items():
        ax.plot(range(1, 21), [float(v.detach()) for v in values], label=label)
    ax.set_xlabel("SGD step")
    ax.set_ylabel("distance from the inserted value")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title("the inserted layers learn (no zero-gradient trap)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "deepen_torchvision.png", dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    constructions()
    measured(argv or MODELS)


if __name__ == "__main__":
    main(sys.argv[1:])
