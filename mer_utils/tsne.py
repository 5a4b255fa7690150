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


def class_separation(embeddings: Mapping[str, np.ndarray], labels: Sequence[str]) -> pd.DataFrame:
    """Silhouette score (sklearn, -1..1; higher = classes apart) of each t-SNE map."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(set(labels.tolist())) < 2:
        raise ConfigError("class separation needs at least two classes among the samples")
    rows = {name: {"silhouette": float(silhouette_score(points, labels))} for name, points in embeddings.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table.round(DECIMALS)
