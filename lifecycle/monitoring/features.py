"""The drift features and their fixed bins: the one definition the rollups, the reference and
every check share, so a served input and a training example are measured the same way.

Per input: text length (characters), token count (the model's tokenizer, logged by the
serving process), out-of-vocabulary rate (the share of its words not among the training
split's words), and each of the EMBEDDING_SIZE numbers of the logged embedding summary
(deployments/serving/features.py). Per answer: the predicted label (categorical) and the
confidence. Bins are fixed, not fitted per version, so rollups never wait for a reference and
windows of two versions compare; each histogram has one more count than its edges (the last
bin is [last edge, +inf), the first (-inf, first edge)).
"""
import hashlib
import re

import numpy as np

from lifecycle.deployments.serving.features import EMBEDDING_SIZE

# Latency (ms): the SLO thresholds are edges, so "share faster than X" reads whole bins.
LATENCY_EDGES_MS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000)
CONFIDENCE_EDGES = tuple(round(x, 2) for x in np.linspace(0.05, 0.95, 19))  # 20 bins of 0.05

NUMERIC = "numeric"
CATEGORICAL = "categorical"


def _geometric(high, count):
    return tuple(float(x) for x in np.unique(np.round(np.geomspace(1, high, count))))


FEATURES = {
    "text_length": _geometric(20_000, 64),
    "token_count": _geometric(1024, 48),
    "oov_rate": tuple(round(x, 3) for x in np.linspace(0.025, 0.975, 39)),
    **{f"embedding_{i}": tuple(round(x, 3) for x in np.linspace(-3.0, 3.0, 61)) for i in range(EMBEDDING_SIZE)},
}
LABEL_FEATURE = "label"  # the predicted label: the one categorical feature
SAMPLE_SIZE = 16  # embedding summaries kept per rollup bucket (bottom-k by request hash)

WORD = re.compile(r"\w+", re.UNICODE)
VOCABULARY_SIZE = 50_000  # the training split's most frequent words kept for the OOV rate


def words(text):
    return WORD.findall(text.lower())


def oov_rate(text, vocabulary):
    """The share of the text's words not in `vocabulary` (a set); 0 for a text with no words."""
    found = words(text)
    if not found:
        return 0.0
    return sum(w not in vocabulary for w in found) / len(found)


def bin_index(values, edges):
    """Bin of each value: 0 for below the first edge, len(edges) for at or above the last."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")


def histogram(values, edges):
    """Counts of `values` over the bins of `edges` (len(edges) + 1 counts), as ints."""
    counts = np.bincount(bin_index(values, edges), minlength=len(edges) + 1)
    return [int(c) for c in counts]


def add_counts(a, b):
    """Two histograms (lists) or label counts (dicts) summed; either may be empty."""
    if isinstance(a, dict) or isinstance(b, dict):
        out = dict(a or {})
        for key, value in (b or {}).items():
            out[key] = out.get(key, 0) + value
        return out
    if not a:
        return list(b or [])
    if not b:
        return list(a)
    return [x + y for x, y in zip(a, b)]


def row_values(text_length, token_count, text, embedding, vocabulary):
    """The numeric features of one input, by name (a missing embedding gives no embedding values)."""
    values = {"text_length": float(text_length), "token_count": float(token_count),
              "oov_rate": oov_rate(text, vocabulary)}
    if embedding and len(embedding) == EMBEDDING_SIZE:
        values.update({f"embedding_{i}": float(x) for i, x in enumerate(embedding)})
    return values


def request_hash(request_id, position):
    """A stable 63-bit hash of one answered input: the key of the bottom-k embedding sample."""
    digest = hashlib.blake2b(f"{request_id}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def merge_sample(a, b, k=SAMPLE_SIZE):
    """The bottom-k of two samples of [hash, *embedding] (duplicates by hash kept once)."""
    seen = {}
    for item in (a or []) + (b or []):
        seen.setdefault(item[0], item)
    return [seen[h] for h in sorted(seen)[:k]]
