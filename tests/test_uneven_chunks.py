"""chunk(x, n) over an axis that n does not divide cuts pieces of ceil(size / n): pieces grown
by one factor would no longer be what chunk cuts (30, 30, 28 -> 60, 60, 56 but 176 -> 59, 59,
58), so such pieces keep their size; even chunks grow together."""

from __future__ import annotations

import torch
from torch import nn

import autogrow
from autogrow.verify import relative_error


class Res2Like(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 1)
        n = (channels + 2) // 3
        self.convs = nn.ModuleList(nn.Conv2d(n, n, 3, padding=1, groups=n) for _ in range(2))
        self.head, self.out = nn.Conv2d(channels, 6, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        parts = self.stem(x).chunk(3, dim=1)
        out = [self.convs[0](parts[0]), self.convs[1](parts[1]), parts[2]]
        return self.out(torch.relu(self.head(torch.cat(out, 1))))


def _widen_unverified(model, x):
    return autogrow.widen(model, 2.0, example_inputs=(x,), seed=0, verify=False)


def test_uneven_chunks_keep_their_pieces_and_the_model_stays_exact():
    torch.manual_seed(0)
    model, x = Res2Like(8).eval(), torch.randn(1, 3, 5, 5)  # 8 = 3 + 3 + 2
    graph = autogrow.analyze(model, (x,))
    assert any("uneven chunks" in (g.frozen or "") for g in graph.groups)
    wide = _widen_unverified(model, x)  # the caller's check, not widen's, decides here
    assert wide.stem.out_channels == 8 and wide.head.out_channels == 12
    with torch.no_grad():
        assert relative_error(wide(x), model(x)) < 1e-4


def test_even_chunks_grow_together():
    torch.manual_seed(0)
    model, x = Res2Like(9).eval(), torch.randn(1, 3, 5, 5)  # 9 = 3 + 3 + 3
    wide = _widen_unverified(model, x)
    assert wide.stem.out_channels == 18 and wide.convs[0].out_channels == 6
    with torch.no_grad():
        assert relative_error(wide(x), model(x)) < 1e-4
