"""A run's output in the artifact store, and loading it back to predict.

The output is a set of files (adapter or full weights as safetensors, tokenizer, config)
each stored under its own sha256, plus a manifest that lists them with the base model's hash,
method, config, metrics and dataset version. The manifest's own sha256 names the output:
what the registry will sign and deploy. Loading re-checks every file's hash (the store
verifies on read) and the base model's directory hash before anything is deserialized.
"""
import json
from pathlib import Path

from django.conf import settings

from lifecycle.core.artifacts import get_store
from lifecycle.core.models import canonical_json
from lifecycle.runs import basemodels

FORMAT = "lifecycle-model/1"
ALLOWED_SUFFIXES = (".json", ".safetensors", ".txt", ".md", ".model", ".jinja")


class OutputError(ValueError):
    pass


def write(directory, manifest):
    """Store every file under `directory` and a manifest listing them; returns the manifest's key."""
    store = get_store()
    files = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            relative = path.relative_to(directory).as_posix()
            if not relative.endswith(ALLOWED_SUFFIXES):
                raise OutputError(f"refusing to store {relative}: outputs hold safetensors, JSON and text files only")
            files[relative] = store.put_file(path).sha256
    body = {"format": FORMAT, **manifest, "files": files}
    return store.put_bytes(canonical_json(body).encode()).sha256


def read_manifest(key):
    manifest = json.loads(get_store().read_bytes(key))
    if manifest.get("format") != FORMAT:
        raise OutputError(f"artifact {key[:12]} is not a Lifecycle model output")
    return manifest


def materialize(key):
    """The output's files in a local cache directory (verified on the way), returned as a Path."""
    manifest = read_manifest(key)
    target = Path(settings.MODEL_CACHE_DIR) / "outputs" / key
    if not (target / ".complete").exists():
        target.mkdir(parents=True, exist_ok=True)
        store = get_store()
        for relative, sha in manifest["files"].items():
            # Names come from our own manifest, but a path must still stay inside the cache.
            dest = (target / relative).resolve()
            if target.resolve() not in dest.parents:
                raise OutputError(f"manifest names a file outside its folder: {relative!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.copy_to(sha, dest)
        (target / ".complete").touch()
    return target, manifest


class Predictor:
    """A trained output, loaded back: `predict(texts)` for classifiers, `generate(prompts)` for causal LMs."""

    def __init__(self, key, directory=None):
        """`directory`, when given, holds the output's files already checked (the serving
        process loads from ModelVersion.load_checked()'s verified folder); else the cache."""
        import torch
        from transformers import AutoTokenizer

        if directory is None:
            directory, self.manifest = materialize(key)
        else:
            self.manifest = read_manifest(key)
        base = basemodels.get(self.manifest["base_model"]["name"])
        actual = basemodels.directory_sha256(base.path)
        if actual != self.manifest["base_model"]["sha256"]:
            raise OutputError(f"base model {base.name} has changed since training (hash {actual[:12]}, "
                              f"trained on {self.manifest['base_model']['sha256'][:12]})")
        self.task = self.manifest["task"]
        self.labels = self.manifest.get("labels", [])
        self.tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
        self.model = self._load(directory, base.path).eval()
        self.torch = torch

    def _load(self, directory, base_path):
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        common = dict(trust_remote_code=False, local_files_only=True, use_safetensors=True)
        auto = AutoModelForSequenceClassification if self.task == "classification" else AutoModelForCausalLM
        extra = {"num_labels": len(self.labels)} if self.task == "classification" else {}
        if self.manifest["method"] == "full":
            return auto.from_pretrained(directory, **common)
        from peft import PeftModel

        base = auto.from_pretrained(base_path, **extra, **common)
        if base.config.pad_token_id is None:
            base.config.pad_token_id = self.tokenizer.pad_token_id
        return PeftModel.from_pretrained(base, directory, is_trainable=False)

    def probabilities(self, texts, batch_size=32):
        rows = []
        with self.torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                       max_length=self.manifest["config"]["max_length"], return_tensors="pt")
                rows.append(self.torch.softmax(self.model(**batch).logits.float(), -1))
        return self.torch.cat(rows).numpy() if rows else None

    def predict(self, texts):
        """[(label, confidence)] for each text."""
        probs = self.probabilities(texts)
        if probs is None:
            return []
        return [(self.labels[i], float(p[i])) for p, i in zip(probs, probs.argmax(1))]

    def generate(self, prompts, max_new_tokens=32):
        answers = []
        with self.torch.no_grad():
            for prompt in prompts:
                ids = self.tokenizer(prompt, return_tensors="pt")
                out = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
                answers.append(self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        return answers
