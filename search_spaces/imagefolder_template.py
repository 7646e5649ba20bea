"""Template: a growth search for a torchvision model on your own ImageFolder data.

Copy this file, point ``DATA`` at a folder with ``train/<class>/*.png`` and
``val/<class>/*.png`` (torchvision.datasets.ImageFolder layout), set the classes and the
image size, then:

    AUTOGROW_DATA=/path/to/images autogrow search my_space.py --trials 20

Needs torchvision (``pip install -e ".[vision,search]"``).
"""

import os

from autogrow.search import Growth, SearchSpace, Training

DATA = os.environ.get("AUTOGROW_DATA", "data/images")  # train/ and val/ below it
NUM_CLASSES = int(os.environ.get("AUTOGROW_CLASSES", "2"))
IMAGE_SIZE = int(os.environ.get("AUTOGROW_IMAGE_SIZE", "64"))


def data():
    """ImageFolder loaders: resize, tensor, normalise (add augmentation to the train side)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize((IMAGE_SIZE, IMAGE_SIZE)),
            transforms.ToTensor(),
            transforms.Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]),
        ]
    )
    train = datasets.ImageFolder(os.path.join(DATA, "train"), transform=tf)
    val = datasets.ImageFolder(os.path.join(DATA, "val"), transform=tf)
    return DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64)


space = SearchSpace(
    name="imagefolder",
    # Any importable factory works: torchvision's ResNet-18 with random weights here.
    seed="torchvision.models:resnet18",
    seed_kwargs={"num_classes": NUM_CLASSES},
    input_shape=(2, 3, IMAGE_SIZE, IMAGE_SIZE),
    data=data,
    training=Training(epochs=1, seed_epochs=3, lr=0.01),
    # Widen the stem/first stage and the last stage; add blocks to the last two stages.
    growth=Growth(widen=["conv1", "layer4.0.conv1"], deepen=["layer3", "layer4"], max_ops=1),
    max_params=30_000_000,
)
