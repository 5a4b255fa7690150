"""Figure 6: t-SNE maps of the preprocessed images (van der Maaten and Hinton 2008, via
scikit-learn), and how far apart the classes lie on them (silhouette score)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mer_utils.errors import ConfigError, check_int
from mer_utils.tables import DECIMALS


def tsne_embedding(images: np.ndarray, size: int = 32, pca_components: int = 50,
                   perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (van der Maaten and Hinton 2008, sklearn) of images (N, H, W, 3): each one
    downscaled to ``size`` x ``size`` (area averaging), flattened, scaled to [0, 1], reduced by
    PCA to ``pca_components`` and embedded; perplexity is capped below N / 3 for small sets."""
    import cv2
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    check_int("tsne_size", size)
    check_int("pca_components", pca_components)
    if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float)) or not 0 < perplexity < float("inf"):
        raise ConfigError(f"perplexity must be a positive number, got {perplexity!r}")
    n = len(images)
    if n < 4:
        raise ConfigError(f"t-SNE needs at least 4 images, got {n}")
    flat = np.stack([cv2.resize(np.asarray(im), (size, size), interpolation=cv2.INTER_AREA).reshape(-1)
                     for im in images]).astype(np.float32) / 255.0
    components = min(pca_components, n - 1, flat.shape[1])
    reduced = PCA(n_components=components, random_state=seed).fit_transform(flat)
    perplexity = min(perplexity, (n - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


CHANCE_SHUFFLES = 200  # label shuffles behind the silhouette's chance level
CHANCE_MEAN, CHANCE_HIGH = "chance: shuffled labels, mean", "chance: shuffled labels, 95th percentile"


def class_separation(embeddings: Mapping[str, np.ndarray], labels: Sequence[str],
                     shuffles: int = CHANCE_SHUFFLES, seed: int = 0) -> pd.DataFrame:
    """Silhouette score (sklearn, -1..1; higher = classes apart) of each t-SNE map, beside its
    chance level: the silhouette of the same map with the class labels shuffled (``shuffles``
    random permutations, seeded), as its mean and 95th percentile. A map whose classes do
    not separate scores within that range; one above the 95th percentile separates them
    better than 19 shuffles in 20."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(set(labels.tolist())) < 2:
        raise ConfigError("class separation needs at least two classes among the samples")
    check_int("shuffles", shuffles)
    rows = {}
    for name, points in embeddings.items():
        rng = np.random.default_rng(seed)  # the same shuffles for every map
        shuffled = [silhouette_score(points, rng.permutation(labels)) for _ in range(shuffles)]
        rows[name] = {"silhouette": float(silhouette_score(points, labels)), CHANCE_MEAN: float(np.mean(shuffled)),
                      CHANCE_HIGH: float(np.percentile(shuffled, 95))}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["silhouette", CHANCE_MEAN, CHANCE_HIGH])
    table.index.name = "method"
    return table.round(DECIMALS)


def separation_note(table: pd.DataFrame) -> str:
    """The chance levels of :func:`class_separation`'s table as one note for the reports'
    index: "chance silhouette (labels shuffled), mean / 95th percentile: ARS -0.0123 /
    0.0456; ..."."""
    parts = [f"{name} {row[CHANCE_MEAN]:.{DECIMALS}f} / {row[CHANCE_HIGH]:.{DECIMALS}f}"
             for name, row in table.iterrows()]
    return "chance silhouette (labels shuffled), mean / 95th percentile: " + "; ".join(parts)
