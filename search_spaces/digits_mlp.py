"""Growth search on scikit-learn's 8x8 digits: an MLP seed grows wider and deeper.

Runs in about a minute on 2 CPU cores for 10 trials:

    autogrow search search_spaces/digits_mlp.py --trials 10
"""

from autogrow.search import Growth, SearchSpace, Training
from autogrow.search.data import digits

space = SearchSpace(
    name="digits_mlp",
    # The seed: a small MLP, built from an importable factory so checkpoints can rebuild it.
    seed="autogrow.search.models:mlp",
    seed_kwargs={"in_features": 64, "hidden": [16, 16], "num_classes": 10},
    input_shape=(2, 1, 8, 8),
    data=lambda: digits(batch_size=32),
    # The seed trains 4 epochs at lr 0.05; each child 1 epoch at lr 0.005 (Net2Net: 1/10).
    training=Training(epochs=1, seed_epochs=4, lr=0.05),
    # Either hidden layer may widen by 1.5x or 2x; depth may be added after either ReLU.
    growth=Growth(factors=(1.5, 2.0), min_ops=1, max_ops=2, top_k=4, tournament=2),
    max_params=200_000,
)
