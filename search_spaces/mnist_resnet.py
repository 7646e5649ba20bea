"""Growth search on MNIST-5k with a small ResNet: widen stages, add residual blocks.

The seed has a stem and two stages of one residual block each (16 and 32 channels). Depth
is added as zeroed copies of a stage's last block (exact: the copy starts as the identity):

    autogrow search search_spaces/mnist_resnet.py --trials 20
"""

from autogrow.search import Growth, SearchSpace, Training
from autogrow.search.data import mnist5k

space = SearchSpace(
    name="mnist_resnet",
    seed="autogrow.search.models:small_resnet",
    seed_kwargs={"in_channels": 1, "widths": [16, 32], "blocks": [1, 1], "num_classes": 10},
    input_shape=(2, 1, 28, 28),
    data=lambda: mnist5k(batch_size=64),
    training=Training(epochs=1, seed_epochs=2, lr=0.05),
    # None: every widenable group of the seed, and every stage (a new block at its end).
    growth=Growth(widen=None, deepen=None, factors=(1.5, 2.0), max_ops=2),
    max_params=1_000_000,
)
