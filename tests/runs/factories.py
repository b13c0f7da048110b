"""Test data for runs: small real dataset versions (through the real ingest) and a tiny
causal LM built from a config with a tokenizer trained on the spot."""
import json
import random
from pathlib import Path

from lifecycle.datasets import ingest, pipeline
from lifecycle.datasets.models import Dataset
from lifecycle.datasets.readers import ColumnMapping
from lifecycle.datasets.synthetic import generate

ROOT_DIR = Path(__file__).resolve().parents[2]
MINILM = "all-MiniLM-L6-v2"
TINY = "tiny-llama"

ANSWERS = {
    "what is two plus two": "four", "name a primary colour": "red", "what do bees make": "honey",
    "opposite of hot": "cold", "what colour is the sky": "blue", "how many legs has a cat": "four legs",
    "what comes after monday": "tuesday", "what is frozen water": "ice", "capital of france": "paris",
    "what do cows drink": "water",
}


def write_rows(path, rows):
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return path


def ingest_rows(tmp_path, user, rows, *, slug="intents", task="classification", columns=None):
    """A dataset version made by the real ingest pipeline (in this process)."""
    dataset = Dataset.objects.filter(slug=slug).first() or Dataset.create(
        user, slug=slug, name=slug.title(), task=task, pii_policy="redact")
    path = write_rows(tmp_path / f"{slug}-{random.random()}.jsonl", rows)
    mapping = columns or ({"text": "text", "label": "label", "group": "customer_id"} if task == "classification"
                          else {"prompt": "prompt", "response": "response"})
    options = ingest.Options.for_dataset(dataset, ColumnMapping(mapping), "drop")
    versions = pipeline.upload(dataset, str(path), "jsonl", options, user=user)
    return versions[-1]


def intent_rows(n=400, seed=3):
    return list(generate(n, seed=seed, noise=0.0, pii_rate=0.0, dup_rate=0.0))


def intent_version(tmp_path, user, n=400, seed=3, **kwargs):
    return ingest_rows(tmp_path, user, intent_rows(n, seed), **kwargs)


def sft_rows(n=120, seed=5):
    rng = random.Random(seed)
    items = list(ANSWERS.items())
    return [{"prompt": f"question: {q} ?", "response": a} for q, a in (rng.choice(items) for _ in range(n))]


def sft_version(tmp_path, user, n=120, seed=5):
    return ingest_rows(tmp_path, user, sft_rows(n, seed), slug="qa", task="sft")


def make_tiny_causal_lm(directory, *, layers=2, hidden=64, max_positions=256, seed=0):
    """A Llama-shaped model with random weights and a word-level tokenizer trained here."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [f"question: {q} ? {a}" for q, a in ANSWERS.items()] * 3
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=max_positions, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    fast.save_pretrained(directory)
    return directory
