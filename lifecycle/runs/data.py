"""Training data as token ids, and batches that spend no compute on padding.

Classification batches are length-grouped: shuffle, cut into mega-batches, sort each by
length, so a batch holds texts of about the same length and pads to its own longest. Causal-LM
batches are packed: several examples concatenated into one row, positions restarting at
each example, which transformers turns into a block-diagonal causal mask (no example sees
another). The loss is on response tokens only (prompt tokens carry the label -100).

Every batch order is a pure function of (seed, epoch), so a resumed run sees exactly the
batches an uninterrupted one would. Django-free.
"""
from dataclasses import dataclass, field

import numpy as np
import torch

IGNORE = -100
MEGA_BATCHES = 50  # batches per length-sorted group: enough to sort well, still shuffled


@dataclass
class Examples:
    """One split, tokenized. `targets` is a class index per example (classification) or a
    token-label array per example (causal LM)."""

    rows: np.ndarray
    input_ids: list
    targets: list
    lengths: np.ndarray = field(init=False)

    def __post_init__(self):
        self.lengths = np.array([len(ids) for ids in self.input_ids], dtype=np.int64)

    def __len__(self):
        return len(self.input_ids)


def encode_classification(tokenizer, texts, targets, rows, max_length):
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    return Examples(np.asarray(rows), [np.asarray(x, dtype=np.int64) for x in ids], list(targets))


def encode_causal(tokenizer, prompts, responses, rows, max_length):
    """prompt + response + EOS, truncated to max_length; labels only on the response and EOS."""
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    inputs, labels = [], []
    for p, r in zip(prompt_ids, response_ids):
        head = bos + p
        tail = r + ([eos] if eos is not None else [])
        ids = (head + tail)[:max_length]
        # The first position never carries a label: packed, it would be predicted from the
        # previous example's last token.
        lab = ([IGNORE] * max(len(head), 1) + tail[1 if not head else 0:])[:max_length]
        inputs.append(np.asarray(ids, dtype=np.int64))
        labels.append(np.asarray(lab, dtype=np.int64))
    return Examples(np.asarray(rows), inputs, labels)


def prompt_ids(tokenizer, prompts, max_length):
    """Token ids of prompts alone (BOS included), for generation."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [np.asarray((bos + p)[-max_length:], dtype=np.int64)
            for p in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]


# --- Batch order


def length_grouped_batches(lengths, batch_size, seed, epoch):
    """Index arrays, one per batch: shuffled, then sorted by length within mega-batches,
    then the batches shuffled again so the long ones are not all at the start."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    mega = batch_size * MEGA_BATCHES
    batches = []
    for start in range(0, len(perm), mega):
        chunk = perm[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths, batch_size):
    """Evaluation order: longest first, no shuffling (results do not depend on order)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# --- Collation


def collate_padded(examples, index, pad_id, *, token_labels=False):
    """Pad to the batch's longest example (right padding)."""
    width = int(examples.lengths[index].max())
    ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    labels = torch.full((len(index), width), IGNORE, dtype=torch.long) if token_labels else None
    for row, i in enumerate(index):
        n = examples.lengths[i]
        ids[row, :n] = torch.from_numpy(examples.input_ids[i])
        mask[row, :n] = 1
        if token_labels:
            labels[row, :n] = torch.from_numpy(examples.targets[i])
    if not token_labels:
        labels = torch.tensor([examples.targets[i] for i in index], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_packed(examples, index):
    """All examples of the batch in one row of shape (1, total tokens): zero padding."""
    ids = np.concatenate([examples.input_ids[i] for i in index])
    labels = np.concatenate([examples.targets[i] for i in index])
    positions = np.concatenate([np.arange(examples.lengths[i]) for i in index])
    return {
        "input_ids": torch.from_numpy(ids).unsqueeze(0),
        "position_ids": torch.from_numpy(positions).unsqueeze(0),
        "labels": torch.from_numpy(labels).unsqueeze(0),
    }


def real_tokens(batch):
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())
