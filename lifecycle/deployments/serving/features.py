"""The small fixed summary of each input that drift detection reads: the mean-pooled last hidden
state, projected to EMBEDDING_SIZE numbers by a random Gaussian projection (Johnson–
Lindenstrauss: distances survive, on average). The projection is seeded, so every serving
process and every restart projects the same way and embeddings stay comparable over time."""
from functools import lru_cache

import numpy as np

EMBEDDING_SIZE = 16
PROJECTION_SEED = 18


@lru_cache(maxsize=8)
def projection(hidden_size):
    """(hidden_size, EMBEDDING_SIZE), the same for a given width in every process."""
    rng = np.random.default_rng([PROJECTION_SEED, hidden_size])
    return (rng.standard_normal((hidden_size, EMBEDDING_SIZE)) / np.sqrt(EMBEDDING_SIZE)).astype(np.float32)


def mean_pool(hidden, attention_mask):
    """Mean over the real tokens (padding excluded) of a (batch, tokens, width) torch tensor."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def summaries(pooled):
    """Projected rows as lists of floats (rounded: the log stores JSON)."""
    projected = pooled.astype(np.float32) @ projection(pooled.shape[1])
    return [[round(float(x), 6) for x in row] for row in projected]
