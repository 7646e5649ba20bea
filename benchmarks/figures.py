"""Draw the width-group figures of docs/inference.md from what ``autogrow.analyze`` infers.

    python -m benchmarks.figures                 # writes docs/figures/*.png
    python -m benchmarks.figures --out /tmp/figs

Needs matplotlib (``pip install -c constraints.txt matplotlib``) and torchvision.

Each figure is a piece of a torchvision model's data flow (from ``torch.fx.symbolic_trace``;
ReLUs and pooling are left out, they keep their input's axes). Modules are boxes, filled with
the colour of the width group of their output channels; a convolution's bottom strip is the
group of its input channels (its *reduce* axis). A box whose channel axis is a concatenation
is split into one segment per piece, in order and to scale. Nothing is drawn from hand-made
tables: colours and segments come from each parameter axis's ``layout`` in
``graph.groups[i].members``, and the legend from ``graph.groups`` and ``graph.nx``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import networkx as nx
import torch
from torch import fx

import autogrow

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Patch, Rectangle
except ImportError as e:  # pragma: no cover - an optional tool
    raise SystemExit(
        "benchmarks.figures needs matplotlib: .venv/bin/pip install -c constraints.txt matplotlib"
    ) from e

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures"

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#009E73", "#D55E00", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
FROZEN = "#C8C8C8"
INK = "#222222"

Part = tuple[autogrow.WidthGroup | None, int]  # one piece of an axis: its group and its size


# -- what autogrow inferred -------------------------------------------------------------------
class Layouts:
    """Each parameter axis's layout, parsed into pieces (group, size) left to right."""

    def __init__(self, graph: autogrow.WidthGraph) -> None:
        self.graph = graph
        self.text: dict[tuple[str, int], str] = {}
        for g in graph.groups:
            for m in g.members:
                self.text[(m.param, m.dim)] = m.layout

    def parts(self, param: str, dim: int) -> list[Part]:
        layout = self.text[(param, dim)]
        pieces = layout[1:-1].split(" | ") if layout.startswith("[") else [layout]
        out: list[Part] = []
        for piece in pieces:
            atoms = [self.graph.by_id(int(a)) for a in re.findall(r"\ba(\d+)\b", piece)]
            size = 1
            for a in atoms:
                size *= a.width
            for n in re.findall(r"(?<![\w])(\d+)\b", piece):
                size *= int(n)
            out.append((atoms[0] if atoms else None, size))
        return out

    def named(self, param: str, dim: int, names: dict[int, str]) -> str:
        """The layout with atom ids replaced by the figure's short group names."""
        return re.sub(
            r"\ba(\d+)\b", lambda m: names.get(int(m.group(1)), m.group(0)), self.text[(param, dim)]
        )


def flow_graph(model: torch.nn.Module, keep) -> nx.DiGraph:
    """The model's fx data flow as a networkx DiGraph, with the nodes ``keep`` rejects
    contracted away (their inputs connected straight to their users)."""
    g = nx.DiGraph()
    traced = fx.symbolic_trace(model).graph
    for node in traced.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        path = str(list(stack.values())[-1][0]) if stack else ""
        name = getattr(node.target, "__name__", str(node.target))
        kind = "module" if node.op == "call_module" else name
        module = str(node.target) if node.op == "call_module" else path
        g.add_node(node.name, kind=kind, module=module, order=len(g))
        for i, src in enumerate(node.all_input_nodes):
            g.add_edge(src.name, node.name, slot=i)
    for n in list(nx.topological_sort(g)):
        if not keep(g.nodes[n]):
            for p in g.predecessors(n):
                for s in g.successors(n):
                    g.add_edge(p, s, slot=g.edges[n, s]["slot"])
            g.remove_node(n)
    return g


def output_parts(flow: nx.DiGraph, layouts: Layouts) -> dict[str, list[Part]]:
    """The pieces of each flow node's channel axis: a module's output axis, an add's first
    input (the rule ties them all), a concatenation's inputs side by side."""
    parts: dict[str, list[Part]] = {}
    for n in nx.topological_sort(flow):
        attrs = flow.nodes[n]
        preds = sorted(flow.predecessors(n), key=lambda p: flow.edges[p, n]["slot"])
        if attrs["kind"] == "module" and (f"{attrs['module']}.weight", 0) in layouts.text:
            parts[n] = layouts.parts(f"{attrs['module']}.weight", 0)
        elif attrs["kind"] == "cat":
            parts[n] = [piece for p in preds for piece in parts.get(p, [])]
        elif preds:
            parts[n] = parts.get(preds[0], [])
    return parts


def group_label(graph: autogrow.WidthGraph, g: autogrow.WidthGroup, alias: str) -> str:
    axes = graph.nx.degree(g.name)  # one edge per parameter axis in the group
    status = "widenable" if g.widenable else f"frozen ({g.frozen})"
    return f"{alias}: group '{g.name}', width {g.width}, {axes} parameter axes, {status}"


# -- drawing --------------------------------------------------------------------------------
@dataclass
class Canvas:
    ax: plt.Axes
    colors: dict[int, str] = field(default_factory=dict)

    def color(self, g: autogrow.WidthGroup | None) -> str:
        if g is None or not g.widenable:
            return FROZEN
        if g.id not in self.colors:
            self.colors[g.id] = PALETTE[len(self.colors) % len(PALETTE)]
        return self.colors[g.id]

    def segments(self, x0, y0, w, h, parts: list[Part], vertical: bool = False) -> list[float]:
        """Fill a rectangle with one segment per piece; returns the segments' centres."""
        total = sum(s for _, s in parts) or 1
        centres, pos = [], 0.0
        for g, s in parts:
            frac = s / total
            if vertical:  # first piece on top
                rect = (x0, y0 + h * (1 - pos - frac)), w, h * frac
                centres.append(y0 + h * (1 - pos - frac / 2))
            else:
                rect = (x0 + w * pos, y0), w * frac, h
                centres.append(x0 + w * (pos + frac / 2))
            hatch = None if g is not None and g.widenable else "///"
            self.ax.add_patch(
                Rectangle(*rect, facecolor=self.color(g), edgecolor="white", lw=0.8, hatch=hatch)
            )
            pos += frac
        return centres

    def box(self, x, y, label, parts, strip=None, w=1.05, h=0.62, sub=None):
        """A module: fill = its output pieces; bottom strip = its input (reduce) pieces."""
        sh = 0.2 if strip else 0.0
        self.segments(x - w / 2, y - h / 2 + sh, w, h - sh, parts)
        if strip:
            self.segments(x - w / 2, y - h / 2, w, sh, strip)
            self.ax.plot([x - w / 2, x + w / 2], [y - h / 2 + sh] * 2, color=INK, lw=0.6)
        self.ax.add_patch(Rectangle((x - w / 2, y - h / 2), w, h, fill=False, ec=INK, lw=1.0))
        text = label if sub is None else f"{label}\n{sub}"
        self.ax.text(
            x,
            y + sh / 2,
            text,
            ha="center",
            va="center",
            fontsize=8.5,
            color=INK,
            linespacing=1.1,
            bbox=dict(boxstyle="round,pad=0.18", fc="white", ec="none", alpha=0.85),
        )

    def add(self, x, y, parts, r=0.2):
        self.ax.add_patch(Circle((x, y), r, facecolor=self.color(parts[0][0]), ec=INK, lw=1.0))
        self.ax.text(
            x,
            y - 0.01,
            "+",
            ha="center",
            va="center",
            fontsize=14,
            color="white",
            fontweight="bold",
        )

    def wire(self, points, parts, arrow=True, lw=1.7):
        """An orthogonal wire through ``points``, coloured by the group it carries."""
        c = self.color(parts[0][0]) if len(parts) == 1 else INK
        xs, ys = zip(*points, strict=True)
        self.ax.plot(xs[:-1], ys[:-1], color=c, lw=lw, solid_capstyle="butt")
        style = "-|>" if arrow else "-"
        self.ax.annotate(
            "",
            xy=points[-1],
            xytext=points[-2],
            arrowprops=dict(
                arrowstyle=style, color=c, lw=lw, shrinkA=0, shrinkB=0, mutation_scale=11
            ),
        )

    def frame(self, x0, y0, x1, y1, label):
        self.ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="#888888", lw=0.9, ls=(0, (4, 3)))
        )
        self.ax.text(
            x0 + 0.08,
            y1 - 0.06,
            label,
            ha="left",
            va="top",
            fontsize=8.5,
            color="#555555",
            style="italic",
        )


def finish(fig, ax, canvas: Canvas, legend: list[tuple[str, str]], path: Path, note: str) -> None:
    handles = [
        Patch(facecolor=c, edgecolor=INK, label=t, hatch=None if c != FROZEN else "///")
        for c, t in legend
    ]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0.0, -0.01),
        fontsize=8.5,
        frameon=False,
        ncol=1,
        handlelength=2.2,
    )
    ax.text(
        0.0,
        1.0,
        note,
        transform=ax.transAxes,
        ha="left",
        va="bottom",
        fontsize=8.5,
        color="#444444",
    )
    ax.set_aspect("equal")
    ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.12)
    plt.close(fig)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def _short(module: str, prefix: str) -> str:
    return module[len(prefix) :] if module.startswith(prefix) else module


# -- ResNet: residual additions tie groups ----------------------------------------------------
def resnet_figure(path: Path) -> autogrow.WidthGraph:
    import torchvision

    model = torchvision.models.resnet18().eval()
    graph = autogrow.analyze(model, (torch.randn(1, 3, 224, 224),))
    layouts = Layouts(graph)

    def keep(a):  # modules with a weight, and the additions
        return a["kind"] == "add" or (
            a["kind"] == "module" and "relu" not in a["module"] and "pool" not in a["module"]
        )

    flow = flow_graph(model, keep)
    parts = output_parts(flow, layouts)
    by_module = {flow.nodes[n]["module"]: n for n in flow if flow.nodes[n]["kind"] == "module"}
    adds = {flow.nodes[n]["module"]: n for n in flow if flow.nodes[n]["kind"] == "add"}
    # The stage's input: the addition that ends layer1.
    source = next(p for p in flow.predecessors(by_module["layer2.0.conv1"]))
    assert source == adds["layer1.1"], source

    fig, ax = plt.subplots(figsize=(14.5, 4.6))
    cv = Canvas(ax)
    y, yd, ytop = 0.0, -1.15, 0.78
    step = 1.32
    xs = {"in": 0.0}
    row0 = ["layer2.0.conv1", "layer2.0.bn1", "layer2.0.conv2", "layer2.0.bn2"]
    row1 = ["layer2.1.conv1", "layer2.1.bn1", "layer2.1.conv2", "layer2.1.bn2"]
    for i, m in enumerate(row0):
        xs[m] = 1.45 + i * step
    xs["add0"] = xs[row0[-1]] + 1.0
    for i, m in enumerate(row1):
        xs[m] = xs["add0"] + 1.05 + i * step
    xs["add1"] = xs[row1[-1]] + 1.0
    xs["out"] = xs["add1"] + 1.25
    xs["layer2.0.downsample.0"] = xs[row0[2]] - 0.05
    xs["layer2.0.downsample.1"] = xs[row0[3]] + 0.2

    # Colours in reading order: the stage-1 stream first.
    for key in (source, *(by_module[m] for m in row0), by_module["layer2.1.conv1"]):
        cv.color(parts[key][0][0])

    w2 = 1.05 / 2
    cv.frame(xs[row0[0]] - 0.75, yd - 0.55, xs["add0"] + 0.4, ytop + 0.33, "layer2.0 (BasicBlock)")
    cv.frame(xs[row1[0]] - 0.6, -0.55, xs["add1"] + 0.4, ytop + 0.33, "layer2.1 (BasicBlock)")

    # wires first, boxes on top
    cv.wire([(0.45, y), (xs[row0[0]] - w2, y)], parts[source])
    cv.wire([(0.2, y - 0.31), (0.2, yd), (xs["layer2.0.downsample.0"] - 0.6, yd)], parts[source])
    for a, b in pairwise(row0):
        cv.wire([(xs[a] + w2, y), (xs[b] - w2, y)], parts[by_module[a]])
    cv.wire([(xs[row0[-1]] + w2, y), (xs["add0"] - 0.2, y)], parts[by_module[row0[-1]]])
    ds0, ds1 = "layer2.0.downsample.0", "layer2.0.downsample.1"
    cv.wire([(xs[ds0] + 0.6, yd), (xs[ds1] - 0.6, yd)], parts[by_module[ds0]])
    cv.wire([(xs[ds1] + 0.6, yd), (xs["add0"], yd), (xs["add0"], y - 0.2)], parts[by_module[ds1]])
    cv.wire([(xs["add0"] + 0.2, y), (xs[row1[0]] - w2, y)], parts[adds["layer2.0"]])
    cv.wire(
        [(xs["add0"], y + 0.2), (xs["add0"], ytop), (xs["add1"], ytop), (xs["add1"], y + 0.2)],
        parts[adds["layer2.0"]],
    )
    for a, b in pairwise(row1):
        cv.wire([(xs[a] + w2, y), (xs[b] - w2, y)], parts[by_module[a]])
    cv.wire([(xs[row1[-1]] + w2, y), (xs["add1"] - 0.2, y)], parts[by_module[row1[-1]]])
    cv.wire([(xs["add1"] + 0.2, y), (xs["out"] - 0.55, y)], parts[adds["layer2.1"]])

    cv.box(xs["in"], y, "layer1", parts[source], w=0.9, sub="output")
    for m in (*row0, *row1, ds0, ds1):
        n = by_module[m]
        strip = layouts.parts(f"{m}.weight", 1) if "conv" in m or m.endswith(".0") else None
        wide = 1.2 if m in (ds0, ds1) else 1.05
        label = _short(_short(m, "layer2.0."), "layer2.1.")
        cv.box(xs[m], y if m not in (ds0, ds1) else yd, label, parts[n], strip=strip, w=wide)
    cv.add(xs["add0"], y, parts[adds["layer2.0"]])
    cv.add(xs["add1"], y, parts[adds["layer2.1"]])
    ax.text(
        xs["out"] - 0.5,
        y,
        "to layer3.0.conv1\nand .downsample.0",
        ha="left",
        va="center",
        fontsize=8.5,
        color=INK,
    )

    aliases = {}
    legend = []
    for key, alias in (
        (source, "stage-1 stream"),
        (by_module["layer2.0.conv1"], "layer2.0 inner"),
        (adds["layer2.0"], "stage-2 stream"),
        (by_module["layer2.1.conv1"], "layer2.1 inner"),
    ):
        g = parts[key][0][0]
        aliases[g.id] = alias
        legend.append((cv.color(g), group_label(graph, g, alias)))
    # Print the layouts the picture is drawn from.
    for m in ("layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv1"):
        print(
            f"  {m}.weight  out {layouts.text[(f'{m}.weight', 0)]:>6}   "
            f"in {layouts.text[(f'{m}.weight', 1)]:>6}"
        )
    note = (
        "ResNet-18, layer2: fill = group of a module's output channels, bottom strip = "
        "group of a convolution's input channels (ReLUs omitted).\nThe additions tie "
        "conv2/bn2 of both blocks, the downsample branch and the skip path into one group: "
        "the stage-2 stream."
    )
    finish(fig, ax, cv, legend, path, note)
    return graph


# -- DenseNet: concatenation keeps each piece's group ------------------------------------------
def densenet_figure(path: Path, layers: int = 3) -> autogrow.WidthGraph:
    import torchvision

    model = torchvision.models.densenet121().eval()
    graph = autogrow.analyze(model, (torch.randn(1, 3, 224, 224),))
    layouts = Layouts(graph)

    def keep(a):
        return a["kind"] == "cat" or (a["kind"] == "module" and "relu" not in a["module"])

    flow = flow_graph(model, keep)
    parts = output_parts(flow, layouts)
    block = "features.denseblock1."
    mods = {flow.nodes[n]["module"]: n for n in flow if flow.nodes[n]["kind"] == "module"}
    cats = {flow.nodes[n]["module"]: n for n in flow if flow.nodes[n]["kind"] == "cat"}
    layer = [f"{block}denselayer{k}" for k in range(1, layers + 2)]
    source = mods["features.pool0"]
    # torchvision concatenates inside each dense layer (bn_function): cat -> norm1
    cat_of = {k: cats[layer[k]] for k in range(layers + 1)}
    for k in range(layers + 1):
        assert next(flow.successors(cat_of[k])) == mods[f"{layer[k]}.norm1"]

    fig, ax = plt.subplots(figsize=(11.5, 8.2))
    cv = Canvas(ax)
    cv.color(parts[source][0][0])
    for k in range(layers):  # the pieces of the concatenation first, in order: g0, g1, ...
        cv.color(parts[mods[f"{layer[k]}.conv2"]][0][0])
    for k in range(layers):
        cv.color(parts[mods[f"{layer[k]}.conv1"]][0][0])

    row_gap, step, w, h = 1.75, 1.45, 1.05, 0.62
    cols = {
        "cat": 0.0,
        "norm1": 1.25,
        "conv1": 1.25 + step,
        "norm2": 1.25 + 2 * step,
        "conv2": 1.25 + 3 * step,
    }
    ys = [-k * row_gap for k in range(layers + 1)]
    lane_x = [-0.95 - 0.28 * (layers - i) for i in range(layers + 1)]  # source 0 outermost
    bar_w, unit = 0.3, 0.0062  # the cat bars: height per channel
    names: dict[int, str] = {parts[source][0][0].id: "g0"}

    # sources: pool0 (g0), then each layer's conv2 (g1, g2, ...)
    sources = [(source, parts[source])] + [
        (mods[f"{layer[k]}.conv2"], parts[mods[f"{layer[k]}.conv2"]]) for k in range(layers)
    ]
    for k in range(layers):
        names[parts[mods[f"{layer[k]}.conv2"]][0][0].id] = f"g{k + 1}"
        names[parts[mods[f"{layer[k]}.conv1"]][0][0].id] = f"b{k + 1}"

    # the concatenations: vertical bars, one segment per piece, arrows into each piece
    seg_y: dict[int, list[float]] = {}
    for k in range(layers + 1):
        p = parts[cat_of[k]]
        height = unit * sum(s for _, s in p)
        seg_y[k] = cv.segments(-bar_w / 2, ys[k] - height / 2, bar_w, height, p, vertical=True)
        ax.add_patch(
            Rectangle((-bar_w / 2, ys[k] - height / 2), bar_w, height, fill=False, ec=INK, lw=1.0)
        )
        ax.text(0, ys[k] + height / 2 + 0.05, "cat", ha="center", va="bottom", fontsize=8.5)

    # wires from each source: out, down its lane, into its piece of every later cat
    sx, sy = cols["conv2"] + w / 2, ys
    for i, (_, p) in enumerate(sources):
        lx = lane_x[i]
        targets = [k for k in range(layers + 1) if k >= i]
        if i == 0:
            start = [(-2.85 + 0.45, ys[0] + 0.0), (lx, ys[0])]
        else:
            k = i - 1
            gx = sx + 0.25 + 0.0 * i
            chan = ys[k] - row_gap / 2
            start = [(sx, sy[k]), (gx, sy[k]), (gx, chan), (lx, chan)]
        last = seg_y[targets[-1]][i]
        cv.wire(start + [(lx, last)], p, arrow=False)
        for k in targets:
            cv.wire([(lx, seg_y[k][i]), (-bar_w / 2, seg_y[k][i])], p)

    cv.box(-2.85, ys[0], "pool0", parts[source], w=0.9, sub="output")
    for k in range(layers):
        y = ys[k]
        ln = f"{layer[k]}."
        cv.wire([(bar_w / 2, y), (cols["norm1"] - w / 2, y)], parts[cat_of[k]])
        seq = ["norm1", "conv1", "norm2", "conv2"]
        for a, b in pairwise(seq):
            cv.wire([(cols[a] + w / 2, y), (cols[b] - w / 2, y)], parts[mods[ln + a]])
        for m in seq:
            strip = layouts.parts(f"{ln}{m}.weight", 1) if m.startswith("conv") else None
            cv.box(cols[m], y, m, parts[mods[ln + m]], strip=strip)
        ax.text(
            cols["norm1"] - w / 2,
            y + h / 2 + 0.06,
            f"denselayer{k + 1}.norm1.weight:  {layouts.named(ln + 'norm1.weight', 0, names)}",
            ha="left",
            va="bottom",
            fontsize=8,
            family="monospace",
            color="#333333",
        )
        ax.text(
            cols["conv2"] + w / 2 + 0.55,
            y + 0.02,
            f"denselayer{k + 1}",
            ha="left",
            va="center",
            fontsize=8.5,
            color="#555555",
            style="italic",
        )
    # the next layer's input: every piece keeps its own group
    y = ys[layers]
    ln = f"{layer[layers]}."
    cv.wire([(bar_w / 2, y), (cols["norm1"] - w / 2, y)], parts[cat_of[layers]])
    cv.box(cols["norm1"], y, "norm1", parts[mods[ln + "norm1"]])
    ax.text(
        cols["norm1"] - w / 2,
        y + h / 2 + 0.06,
        f"denselayer{layers + 1}.norm1.weight:  {layouts.named(ln + 'norm1.weight', 0, names)}",
        ha="left",
        va="bottom",
        fontsize=8,
        family="monospace",
        color="#333333",
    )
    ax.text(
        cols["norm1"] + w / 2 + 0.2,
        y,
        f"denselayer{layers + 1}.conv1 reduces over the same\n[g0 | g1 | ... ] axis; layers "
        f"{layers + 2}-6 and transition1\nread longer concatenations",
        ha="left",
        va="center",
        fontsize=8.5,
        color=INK,
    )

    legend = [(cv.color(parts[source][0][0]), group_label(graph, parts[source][0][0], "g0"))]
    for k in range(layers):
        for m, alias in (("conv1", f"b{k + 1}"), ("conv2", f"g{k + 1}")):
            g = parts[mods[f"{layer[k]}.{m}"]][0][0]
            legend.append((cv.color(g), group_label(graph, g, alias)))
    for k in range(layers + 1):
        print(f"  {layer[k]}.norm1.weight  {layouts.text[(f'{layer[k]}.norm1.weight', 0)]}")
    note = (
        "DenseNet-121, denseblock1 (first layers): fill = group of a module's output "
        "channels, bottom strip = group of a convolution's input channels.\nEach layer's "
        "new features (conv2) are a group of their own; a concatenation lays the groups "
        "side by side, so the next layers' input axis is [g0 | g1 | g2 ...]."
    )
    finish(fig, ax, cv, legend, path, note)
    return graph


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    args = parser.parse_args()
    torch.manual_seed(0)
    resnet_figure(args.out / "resnet_block_groups.png")
    densenet_figure(args.out / "densenet_block_groups.png")


if __name__ == "__main__":
    main()
