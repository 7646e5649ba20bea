"""Why autogrow does not add experts: duplicate one expert and measure the error.

Expert 0 of the tiny Qwen2-MoE and Mixtral of ``benchmarks/hf_families.py`` is duplicated
(same router row, both copies' ``down_proj`` halved), with ``num_experts_per_tok`` kept or
raised by one; the outputs are compared on fresh inputs (docs/transformers.md, "Mixtures of
experts and state-space models", explains why neither can be exact under top-k routing).

    python -m benchmarks.moe_add_experts
"""

from __future__ import annotations

import copy
import warnings

import torch

from benchmarks.hf_families import inputs, output, tiny

EXPERT_COUNTS = {"qwen2-moe": "num_experts", "mixtral": "num_local_experts"}


def with_expert_duplicated(model: torch.nn.Module, field: str, extra_k: int) -> torch.nn.Module:
    """``model`` with expert 0 copied to a new last expert, both halves' outputs halved."""
    config = copy.deepcopy(model.config)
    setattr(config, field, getattr(config, field) + 1)
    config.num_experts_per_tok += extra_k
    new = type(model)(config).eval()
    old = model.state_dict()
    state = {}
    for key, value in new.state_dict().items():
        if old[key].shape == value.shape:
            state[key] = old[key].clone()
            continue
        n = old[key].shape[0]  # the expert axis: router rows, stacked experts
        grown = torch.cat([old[key], old[key][:1]], 0)
        if key.endswith("experts.down_proj"):
            grown[0] /= 2
            grown[n] /= 2
        state[key] = grown
    new.load_state_dict(state)
    return new


def main() -> None:
    from autogrow.verify import relative_error

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print("| family | top-k | max rel error |")
    print("|---|---|---|")
    for name, field in EXPERT_COUNTS.items():
        model, x = tiny(name), inputs(name, seed=3)
        for extra_k in (0, 1):
            new = with_expert_duplicated(model, field, extra_k)
            error = relative_error(output(new, x), output(model, x))
            print(f"| {name} | k + {extra_k} | {error:.1e} |")


if __name__ == "__main__":
    main()
