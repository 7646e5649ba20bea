"""Small hand-written models, and the helpers the tests use to check ``autogrow.widen``.

Nothing here imports ``autogrow``: the models and helpers can be checked on their own.
Every model is built from a fixed seed, and every normalisation layer gets non-trivial
affine parameters and running statistics (see :func:`randomize_norms`), so that a widening
that mishandles them changes the outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

REL_TOL = 1e-4


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer random affine parameters and (for BatchNorm) running stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return model


def snapshot(model: nn.Module) -> dict:
    """Everything about a model that widen(inplace=False) must leave alone."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": {name: m.training for name, m in model.named_modules()},
        "modules": [(name, type(m)) for name, m in model.named_modules()],
        "params": [(name, tuple(p.shape), p.requires_grad) for name, p in model.named_parameters()],
    }


def assert_unchanged(model: nn.Module, snap: dict) -> None:
    """Fail unless ``model`` still matches ``snap`` (taken by :func:`snapshot`) exactly."""
    now = snapshot(model)
    assert now["modules"] == snap["modules"], "the original model's module tree changed"
    assert now["params"] == snap["params"], "the original model's parameters changed shape"
    assert now["training"] == snap["training"], "the original model's training flags changed"
    assert now["state"].keys() == snap["state"].keys(), "the original state_dict keys changed"
    for k, before in snap["state"].items():
        after = now["state"][k]
        assert after.shape == before.shape, f"original {k} changed shape"
        assert after.dtype == before.dtype, f"original {k} changed dtype"
        assert torch.equal(after, before), f"original {k} changed value"


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def max_rel_err(new: torch.Tensor, old: torch.Tensor) -> float:
    """max|new - old| / max|old| (max|old| floored at a tiny number)."""
    assert new.shape == old.shape, f"output shape {tuple(new.shape)} != {tuple(old.shape)}"
    diff = (new.double() - old.double()).abs().max().item()
    scale = max(old.double().abs().max().item(), 1e-12)
    if math.isnan(diff):
        return math.inf
    return diff / scale


def flatten_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten_outputs(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in flatten_outputs(out[k])]
    raise TypeError(f"unexpected output type {type(out)}")


@torch.no_grad()
def eval_outputs(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    """Outputs of ``model`` in eval mode; restores the model's training flags afterwards."""
    flags = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        return flatten_outputs(model(*inputs))
    finally:
        for name, m in model.named_modules():
            m.training = flags[name]


def assert_same_function(new: nn.Module, old: nn.Module, inputs: tuple, tol: float = REL_TOL):
    """Eval-mode outputs of ``new`` and ``old`` agree to ``tol`` max relative error."""
    outs_new = eval_outputs(new, inputs)
    outs_old = eval_outputs(old, inputs)
    assert len(outs_new) == len(outs_old)
    for a, b in zip(outs_new, outs_old, strict=True):
        assert torch.isfinite(b).all(), "reference output is not finite (bad test model)"
        err = max_rel_err(a, b)
        assert err <= tol, f"widened model differs: max relative error {err:.3e} > {tol:.0e}"


def shares_storage(a: nn.Module, b: nn.Module) -> list[str]:
    """Names of ``a``'s parameters/buffers whose storage is also used by ``b``."""
    ptrs = {t.untyped_storage().data_ptr() for t in b.state_dict().values() if t.numel()}
    return [
        k for k, t in a.state_dict().items() if t.numel() and t.untyped_storage().data_ptr() in ptrs
    ]


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """fc1 -> relu -> fc2 -> relu -> fc (the last layer's output = class logits, frozen)."""

    def __init__(self, d_in: int = 10, hidden: int = 16, d_out: int = 5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc = nn.Linear(hidden, d_out)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc(x)


class LeNet(nn.Module):
    """Classic LeNet-5 whose forward hard-codes the flattened size: ``x.view(-1, 16*5*5)``.

    Widening conv2 (16 channels) would break the ``view``: widen must refuse that group
    (HardcodedSizeError) or leave it alone and return a correct model.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class ResBlock(nn.Module):
    """Pre-norm residual MLP block: x + fc2(gelu(fc1(ln(x))))."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.ln(x))))


class ResidualMLP(nn.Module):
    def __init__(
        self, d_in: int = 12, d: int = 16, hidden: int = 24, depth: int = 2, d_out: int = 4
    ):
        super().__init__()
        self.stem = nn.Linear(d_in, d)
        self.blocks = nn.Sequential(*[ResBlock(d, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, d_out)

    def forward(self, x):
        x = self.stem(x)
        x = self.blocks(x)
        return self.head(self.norm(x))


class FunctionalParams(nn.Module):
    """Layers written with F.conv2d / F.linear on the model's own nn.Parameters."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3, generator=g) * 0.3)
        self.bias = nn.Parameter(torch.randn(8, generator=g) * 0.1)
        self.weight2 = nn.Parameter(torch.randn(10, 8, 3, 3, generator=g) * 0.2)
        self.bias2 = nn.Parameter(torch.randn(10, generator=g) * 0.1)
        self.w = nn.Parameter(torch.randn(16, 10, generator=g) * 0.3)
        self.b = nn.Parameter(torch.randn(16, generator=g) * 0.1)
        self.w_out = nn.Parameter(torch.randn(5, 16, generator=g) * 0.3)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.weight, self.bias, padding=1))
        x = F.relu(F.conv2d(x, self.weight2, self.bias2, padding=1))
        x = x.mean(dim=(2, 3))
        x = torch.tanh(F.linear(x, self.w, self.b))
        return F.linear(x, self.w_out)


class ShapeControlFlow(nn.Module):
    """Shape-dependent ``if``: torch.fx.symbolic_trace cannot follow it, torch.export can.

    With a batch of more than one sample the hidden features are centred over the batch.
    Both branches are width-agnostic, so a correct widening preserves both.
    """

    def __init__(self, d_in: int = 8, hidden: int = 12, d_out: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc = nn.Linear(hidden, d_out)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if x.shape[0] > 1:
            h = h - h.mean(dim=0, keepdim=True)
        h = torch.tanh(self.fc2(h))
        return self.fc(h)


class ValueControlFlow(nn.Module):
    """Data-dependent ``if`` on a tensor value: neither fx nor export can capture it."""

    def __init__(self, d_in: int = 8, hidden: int = 12, d_out: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.fc = nn.Linear(hidden, d_out)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if x.sum() > 0:
            h = F.relu(self.fc2(h))
        else:
            h = torch.sigmoid(self.fc3(h))
        return self.fc(h)


class SEGate(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc2(relu(fc1(avgpool(x)))))."""

    def __init__(self, c: int, r: int):
        super().__init__()
        self.fc1 = nn.Linear(c, r)
        self.fc2 = nn.Linear(r, c)

    def forward(self, x):
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class SmallCNN(nn.Module):
    """BatchNorm, residual add, channel concat, chunk (GLU), grouped + depthwise conv, SE."""

    def __init__(self, c_in: int = 3, num_classes: int = 7):
        super().__init__()
        self.stem = nn.Conv2d(c_in, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        # residual block
        self.res_conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.res_bn1 = nn.BatchNorm2d(8)
        self.res_conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.res_bn2 = nn.BatchNorm2d(8)
        # two branches concatenated along channels
        self.branch_a = nn.Conv2d(8, 6, 1)
        self.branch_b = nn.Conv2d(8, 6, 3, padding=1)
        self.cat_bn = nn.BatchNorm2d(12)
        # chunk(2) -> GLU: a * sigmoid(b) (6 channels)
        # grouped conv, depthwise conv
        self.gconv = nn.Conv2d(6, 12, 3, padding=1, groups=2, bias=False)
        self.gconv_bn = nn.BatchNorm2d(12)
        self.dwconv = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.dw_bn = nn.BatchNorm2d(12)
        self.se = SEGate(12, 4)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        r = F.relu(self.res_bn1(self.res_conv1(x)))
        r = self.res_bn2(self.res_conv2(r))
        x = F.relu(x + r)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.cat_bn(x)
        a, b = x.chunk(2, dim=1)
        x = a * torch.sigmoid(b)
        x = F.silu(self.gconv_bn(self.gconv(x)))
        x = F.relu(self.dw_bn(self.dwconv(x)))
        x = self.se(x)
        x = F.max_pool2d(x, 2)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# --------------------------------------------------------------------------------------------
# registry used by the tests: name -> (factory, example-input factory)
# --------------------------------------------------------------------------------------------


def _inputs(*shape: int, seed: int = 0) -> tuple[torch.Tensor]:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)),)


def make(name: str) -> tuple[nn.Module, tuple, tuple]:
    """(model, example_inputs, other test inputs) for one of :data:`MODELS_ALL`."""
    factory, shape = MODELS_ALL[name]
    torch.manual_seed(0)
    model = randomize_norms(factory(), seed=1)
    example = _inputs(*shape, seed=2)
    test = _inputs(*((shape[0] + 3,) + tuple(shape[1:])), seed=3)
    return model, example, test


MODELS: dict[str, tuple] = {
    "mlp": (MLP, (4, 10)),
    "lenet": (LeNet, (2, 3, 32, 32)),
    "residual_mlp": (ResidualMLP, (4, 12)),
    "functional_params": (FunctionalParams, (2, 3, 8, 8)),
    "shape_control_flow": (ShapeControlFlow, (4, 8)),
    "small_cnn": (SmallCNN, (2, 3, 8, 8)),
}


# --------------------------------------------------------------------------------------------
# grouped convolutions whose channel blocks do not line up (regression models, found by the
# random-DAG property test)
# --------------------------------------------------------------------------------------------


class GroupNormThenGroupedConv(nn.Module):
    """GroupNorm(4 groups) feeding a grouped conv with 2 groups."""

    def __init__(self, c_in: int = 3, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 4, 1, bias=False)
        self.gn = nn.GroupNorm(4, 4)
        self.gconv = nn.Conv2d(4, 2, 3, padding=1, groups=2)
        self.fc = nn.Linear(2, num_classes)

    def forward(self, x):
        x = F.relu(self.gn(self.conv(x)))
        x = self.gconv(x)
        return self.fc(x.mean(dim=(2, 3)))


class MixedGroupsConv(nn.Module):
    """A grouped conv with 4 groups feeding a grouped conv with 2 groups."""

    def __init__(self, c_in: int = 2, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 12, 1)
        self.g4 = nn.Conv2d(12, 4, 1, groups=4)
        self.g2 = nn.Conv2d(4, 2, 1, groups=2)
        self.fc = nn.Linear(2, num_classes)

    def forward(self, x):
        x = F.relu(self.g4(F.relu(self.conv(x))))
        x = self.g2(x)
        return self.fc(x.mean(dim=(2, 3)))


GROUPED_MODELS: dict[str, tuple] = {
    "groupnorm_then_grouped_conv": (GroupNormThenGroupedConv, (2, 3, 8, 8)),
    "mixed_groups_conv": (MixedGroupsConv, (2, 2, 8, 8)),
}
MODELS_ALL = {**MODELS, **GROUPED_MODELS}
