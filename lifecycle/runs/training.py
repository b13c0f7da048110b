"""The training loop, top to bottom: config, data, model, optimizer, schedule, loop,
evaluation, checkpoint. Django-free: the worker (runs/worker.py) and the benchmark hand it
tokenized data and a Reporter, which decides where telemetry and checkpoints go.

Exact resume: the batch order is a function of (seed, epoch), an optimizer step s always
consumes the micro-batches s·accum … s·accum+accum-1 of that stream, and a checkpoint holds
trainable weights, optimizer, scheduler, torch RNG and early-stopping state. A run resumed
from step k therefore computes the same steps k+1… as one that never stopped.
"""
import contextlib
import io
import math
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from lifecycle.runs import data as D
from lifecycle.runs import methods, metrics

LOSS_CHUNK_TOKENS = 1024  # logits of at most this many tokens exist at once (causal LM)


class Stopped(Exception):
    """The reporter asked the loop to stop (a cancel)."""


class OutOfMemory(Exception):
    pass


@dataclass
class TrainData:
    train: D.Examples
    eval: D.Examples
    test: D.Examples
    labels: list = field(default_factory=list)  # classes the model predicts (classification)
    # `labels` then any validation/test labels never seen in training (they count as errors).
    all_labels: list = field(default_factory=list)
    test_prompts: list = field(default_factory=list)  # causal LM: prompt ids and references
    test_references: list = field(default_factory=list)


class Reporter:
    """Where the loop's output goes. The default keeps everything in memory (benchmarks, tests)."""

    def __init__(self):
        self.steps, self.evals, self.checkpoints = [], [], []

    def phase(self, name, **info):
        pass

    def step(self, step, values):
        self.steps.append((step, values))

    def evaluation(self, step, values):
        self.evals.append((step, values))

    def checkpoint(self, step, weights, state):
        self.checkpoints.append((step, weights, state))

    def stop_requested(self):
        return False


# --- Setup


def pick_device(precision="auto", device=None):
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return device, bf16


def load_model(config, path, num_labels=None, labels=None, device=None):
    """The base model from a local directory: offline, safetensors only, no remote code."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    common = dict(trust_remote_code=False, local_files_only=True, use_safetensors=True)
    if pick_device(config.precision, device)[0].type == "cpu":
        # On CPU the plain attention trains short sequences a few per cent faster than SDPA
        # (measured for MiniLM, bench/RESULTS.md); on a GPU, SDPA's fused kernels win by far.
        common["attn_implementation"] = "eager"
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    if config.task == "classification":
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, **common)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **common)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


class Trainer:
    def __init__(self, config, model, tokenizer, data, reporter=None, device=None, rank=0, world=1):
        self.config = config
        self.data = data
        self.reporter = reporter or Reporter()
        self.device, self.bf16 = pick_device(config.precision, device)
        self.tokenizer = tokenizer
        self.rank, self.world = rank, world
        self.model = methods.for_config(config).wrap(model).to(self.device)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(self.model, "enable_input_require_grads"):
                self.model.enable_input_require_grads()
        self.packed = config.task == "causal_lm" and config.method != "prompt_tuning"
        self.loss_module = LossModule(self.model, self.packed)
        # Several processes (torchrun / accelerate launch, one per GPU): DistributedDataParallel
        # around the module that computes the loss, so every forward goes through DDP's hooks.
        self.forward = self.loss_module if world == 1 else torch.nn.parallel.DistributedDataParallel(
            self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # Each process takes every world-th batch: an epoch is this many micro-batches per process.
        self.micro_per_epoch = max(1, math.ceil(math.ceil(len(data.train) / config.batch_size) / world))
        self.steps_per_epoch = max(1, math.ceil(self.micro_per_epoch / config.grad_accum))
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.optimizer = self._optimizer()
        self.scheduler = self._scheduler()
        self.step = 0
        self.early = {"best": None, "bad": 0, "stopped": False}
        self._epoch_batches = {}

    def trainable(self):
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def _optimizer(self):
        decay, no_decay = [], []
        for name, p in self.trainable().items():
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=self.config.lr, fused=fused)

    def _scheduler(self):
        from transformers import get_linear_schedule_with_warmup

        warmup = int(self.config.warmup_ratio * self.total_steps)
        return get_linear_schedule_with_warmup(self.optimizer, warmup, self.total_steps)

    # --- Resume

    def state(self):
        """Everything besides the weights needed to continue exactly (weights_only-loadable)."""
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "early": dict(self.early),
        }

    def restore(self, weights, state):
        missing = set(self.trainable()) - set(weights)
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} trained tensors (e.g. {sorted(missing)[0]}): "
                             "it was made with a different method or model")
        self.model.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        if state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.early = dict(state["early"])
        self.step = int(state["step"])

    # --- The loop

    def fit(self):
        """Train from self.step to the end (or early stop); returns the test evaluation."""
        self.reporter.phase("training", step=self.step, total_steps=self.total_steps)
        if self.step == 0:
            # Dropout's random stream starts from the seed whatever ran before in this
            # process; a resumed run gets the checkpoint's stream from restore() instead.
            torch.manual_seed(self.config.seed + self.rank)
        self.model.train()
        while self.step < self.total_steps and not self.early["stopped"]:
            if self._agree(self.reporter.stop_requested()):
                raise Stopped(f"stopped at step {self.step}")
            values = self._train_step()
            self.step += 1
            self.reporter.step(self.step, values)
            if self.config.evaluates_at(self.step, self.steps_per_epoch, self.total_steps):
                if self.rank == 0:
                    self._evaluate_and_maybe_stop()
                self.early["stopped"] = self._agree(self.early["stopped"])
            if self.step % self.config.checkpoint_every == 0 and self.step < self.total_steps and self.rank == 0:
                self.reporter.checkpoint(self.step, self._weights(), self.state())
        self.reporter.phase("testing", step=self.step, total_steps=self.total_steps)
        return self.test() if self.rank == 0 else None

    def _agree(self, flag):
        """Rank 0's answer, for every process (stop now? early-stopped?)."""
        if self.world == 1:
            return flag
        value = torch.tensor([1 if flag else 0], device=self.device)
        torch.distributed.broadcast(value, src=0)
        return bool(value.item())

    def _micro_batches(self, step):
        for m in range(step * self.config.grad_accum, (step + 1) * self.config.grad_accum):
            epoch, position = divmod(m, self.micro_per_epoch)
            batches = self._batches_for(epoch)
            yield self._collate(self.data.train, batches[(position * self.world + self.rank) % len(batches)])

    def _batches_for(self, epoch):
        if epoch not in self._epoch_batches:
            self._epoch_batches = {epoch: D.length_grouped_batches(self.data.train.lengths, self.config.batch_size,
                                                                   self.config.seed, epoch)}
        return self._epoch_batches[epoch]

    def _collate(self, examples, index):
        if self.packed:
            batch = D.collate_packed(examples, index)
        else:
            batch = D.collate_padded(examples, index, self.tokenizer.pad_token_id,
                                     token_labels=self.config.task == "causal_lm")
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _train_step(self):
        started = time.perf_counter()
        batches = list(self._micro_batches(self.step))
        weights = self._loss_weights(batches)
        loss_total, examples, tokens = 0.0, 0, 0
        try:
            for i, (batch, weight) in enumerate(zip(batches, weights)):
                with self._sync(last=i == len(batches) - 1):
                    with self._autocast():
                        loss = self.forward(batch)
                    (loss * weight).backward()
                loss_total += loss.item() * weight / self.world
                examples += self._example_count(batch)
                tokens += D.real_tokens(batch)
            loss_total = self._sum(loss_total)
            norm = torch.nn.utils.clip_grad_norm_(self.trainable().values(), self.config.max_grad_norm or float("inf"))
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError as exc:
            raise self._oom(exc) from None
        except RuntimeError as exc:
            if "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower():
                raise self._oom(exc) from None
            raise
        elapsed = time.perf_counter() - started
        return {
            "loss": loss_total, "lr": lr, "grad_norm": float(norm), "step_time": elapsed,
            "examples_per_s": examples / elapsed, "tokens_per_s": tokens / elapsed,
            "epoch": (self.step + 1) / self.steps_per_epoch, "memory_mb": memory_mb(self.device),
        }

    def _loss_weights(self, batches):
        """Each micro-batch's share of the step's loss: by examples (classification) or by
        response tokens (causal LM), so accumulation equals one big batch."""
        if self.config.task == "classification":
            sizes = [len(b["labels"]) for b in batches]
        else:
            sizes = [int((b["labels"][..., 1:] != D.IGNORE).sum()) for b in batches]
        total = self._sum(sum(sizes)) or 1
        # DDP averages gradients over the processes: scale up so the step's gradient is the
        # sum over every process's examples divided by their global count.
        return [s / total * self.world for s in sizes]

    def _sum(self, number):
        if self.world == 1:
            return number
        value = torch.tensor([float(number)], device=self.device, dtype=torch.float64)
        torch.distributed.all_reduce(value)
        return value.item()

    def _sync(self, last):
        """Gradient accumulation under DDP: all-reduce only on a step's last micro-batch."""
        if self.world == 1 or last:
            return contextlib.nullcontext()
        return self.forward.no_sync()

    def _example_count(self, batch):
        if "position_ids" in batch:
            return int((batch["position_ids"] == 0).sum())
        return len(batch["input_ids"])

    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)

    def _oom(self, exc):
        c = self.config
        return OutOfMemory(
            f"out of memory at batch size {c.batch_size} × max length {c.max_length} on {self.device.type}: "
            f"use a smaller batch with gradient accumulation (e.g. batch {max(1, c.batch_size // 2)}, accumulation "
            f"{c.grad_accum * 2}), a shorter max length, or gradient checkpointing ({str(exc)[:200]})")

    # --- Losses

    def _chunked_lm_loss(self, batch, reduction="mean"):
        return chunked_lm_loss(self.model, batch, reduction)

    # --- Evaluation

        # use_cache=False: with a cache, transformers builds one causal mask over the whole
        # packed row instead of one block per example, and examples would see each other.

    @torch.no_grad()
    def _evaluate(self, examples):
        """Validation loss (and accuracy, macro F1 for classification) on `examples`."""
        self.model.eval()
        try:
            if self.config.task == "classification":
                report = self._classification_report(examples)
                return {"eval_loss": report["loss"],
                        "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
            loss_sum, tokens = self._lm_loss_sum(examples)
            return {"eval_loss": loss_sum / max(1, tokens), "perplexity": math.exp(min(50, loss_sum / max(1, tokens)))}
        finally:
            self.model.train()

    def _classify(self, examples):
        """(true class, probabilities, per-example loss) in the original order."""
        n, k = len(examples), len(self.data.labels)
        probs = np.zeros((n, k), dtype=np.float64)
        losses = np.zeros(n, dtype=np.float64)
        for index in D.sorted_batches(examples.lengths, self.config.batch_size * 2):
            batch = self._collate(examples, index)
            with self._autocast():
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            probs[index] = torch.softmax(logits, -1).cpu().numpy()
            known = batch["labels"].clamp(max=k - 1)
            losses[index] = F.cross_entropy(logits, known, reduction="none").cpu().numpy()
        y_true = np.asarray(examples.targets, dtype=np.int64)
        losses[y_true >= k] = -np.log(1e-12)  # a label never seen in training: the worst loss
        return y_true, probs, losses

    def _classification_report(self, examples, worst=False):
        y_true, probs, losses = self._classify(examples)
        labels = self.data.all_labels or self.data.labels
        # Columns of probability 0 for labels the model never learnt: they are always errors.
        probs = np.pad(probs, ((0, 0), (0, len(labels) - probs.shape[1])))
        y_pred = probs.argmax(1)
        report = metrics.classification_report(y_true, y_pred, probs, labels)
        report["loss"] = float(losses.mean()) if len(losses) else None
        if worst:
            mistakes, lossy = metrics.worst_examples(examples.rows.tolist(), y_true, y_pred, probs, losses, labels)
            report["worst"] = {"confident_mistakes": mistakes, "highest_loss": lossy}
        return report

    def _lm_loss_sum(self, examples):
        loss_sum, tokens = 0.0, 0
        for index in D.sorted_batches(examples.lengths, self.config.batch_size):
            batch = self._collate(examples, index)
            with self._autocast():
                if self.packed:
                    total, count = self._chunked_lm_loss(batch, reduction="sum")
                else:
                    count = int((batch["labels"][:, 1:] != D.IGNORE).sum())
                    total = self.model(**batch).loss.float() * count
            loss_sum += float(total)
            tokens += count
        return loss_sum, tokens

    def _evaluate_and_maybe_stop(self):
        values = self._evaluate(self.data.eval)
        values["epoch"] = self.step / self.steps_per_epoch
        self.reporter.evaluation(self.step, values)
        metric = self.config.early_stopping_metric
        if not metric or values.get(metric) is None:
            return
        score = -values[metric] if metric == "eval_loss" else values[metric]
        if self.early["best"] is None or score > self.early["best"] + 1e-9:
            self.early.update(best=score, bad=0)
        else:
            self.early["bad"] += 1
            if self.early["bad"] >= self.config.early_stopping_patience:
                self.early["stopped"] = True
                self.reporter.phase("early_stopped", step=self.step, total_steps=self.total_steps)

    @torch.no_grad()
    def test(self):
        """The held-out report: runs/metrics.py's classification report, or perplexity and
        exact match for causal LM."""
        self.model.eval()
        if self.config.task == "classification":
            return self._classification_report(self.data.test, worst=True)
        loss_sum, tokens = self._lm_loss_sum(self.data.test)
        matches, count = self._exact_matches()
        return metrics.causal_lm_report(loss_sum, tokens, matches, count)

    def _exact_matches(self):
        limit = min(self.config.generate_limit, len(self.data.test_prompts))
        matches = 0
        for ids, reference in zip(self.data.test_prompts[:limit], self.data.test_references[:limit]):
            answer = self.generate(ids, max_new_tokens=len(self.tokenizer(reference, add_special_tokens=False)["input_ids"]) + 4)
            matches += answer.strip() == reference.strip()
        return matches, limit

    def generate(self, ids, max_new_tokens):
        inputs = torch.as_tensor(ids, device=self.device).unsqueeze(0)
        out = self.model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, inputs.shape[1]:], skip_special_tokens=True)

    # --- Output

    def _weights(self):
        return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in self.trainable().items()}

    def save(self, directory):
        """Adapter (peft) or full weights, and the tokenizer, as safetensors."""
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)


class LossModule(torch.nn.Module):
    """The training loss as a module, so that DistributedDataParallel can wrap it."""

    def __init__(self, model, chunked):
        super().__init__()
        self.model, self.chunked = model, chunked

    def forward(self, batch):
        if self.chunked:
            return chunked_lm_loss(self.model, batch)
        return self.model(**batch).loss


def chunked_lm_loss(model, batch, reduction="mean"):
    """Cross-entropy on response tokens only, through the LM head a chunk at a time: the full
    (tokens × vocabulary) fp32 logits never exist, and prompt positions never reach the head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone, head = base.get_decoder(), base.get_output_embeddings()
    # use_cache=False: with a cache, transformers builds one causal mask over the whole packed
    # row instead of one block per example, and examples would see each other.
    hidden = backbone(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != D.IGNORE
    hidden, targets = hidden[:, :-1][keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), LOSS_CHUNK_TOKENS):
        h, t = hidden[start:start + LOSS_CHUNK_TOKENS], targets[start:start + LOSS_CHUNK_TOKENS]
        total = total + torch.utils.checkpoint.checkpoint(_chunk_loss, h, t, head.weight, head.bias, use_reentrant=False)
    if reduction == "sum":
        return total, len(targets)
    return total / max(1, len(targets))


def _chunk_loss(hidden, targets, weight, bias):
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS (KB on Linux)


def state_bytes(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_state(raw):
    """A checkpoint's state, read with weights_only=True: tensors and plain data, never code."""
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
