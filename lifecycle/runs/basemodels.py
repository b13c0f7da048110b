"""Base models: local Hugging Face model directories under the configured model roots.

People pick a model by its catalogue name; the path comes from our own scan of the roots,
never from the request. Before anything is loaded, a directory is inspected: weights must
be safetensors (a `.bin` pickle could run code when loaded), and a config or tokenizer
config that names remote code (`auto_map`, custom pipelines) is refused outright, on top
of `trust_remote_code=False` and `HF_HUB_OFFLINE=1`. Django-free apart from reading settings.
"""
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")
ENCODER_ONLY = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta",
                "mpnet", "camembert", "modernbert"}
SCAN_DEPTH = 3


class ModelDirError(ValueError):
    """The directory cannot be used as a base model; the message says why."""


@dataclass
class BaseModel:
    name: str
    path: Path
    config: dict = field(default_factory=dict)

    @property
    def model_type(self):
        return self.config.get("model_type", "")

    @property
    def architectures(self):
        return self.config.get("architectures") or []

    @property
    def max_positions(self):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            if isinstance(self.config.get(key), int):
                return self.config[key]
        return None

    @property
    def can_generate(self):
        """A decoder with a language-model head: the only kind causal-LM SFT can train."""
        if self.model_type in ENCODER_ONLY and not self.config.get("is_decoder"):
            return False
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in self.architectures) or not self.architectures


def roots():
    """The configured model roots as {label: path} (settings.MODEL_ROOTS: the bundled MiniLM
    plus LIFECYCLE_MODEL_ROOTS)."""
    from django.conf import settings

    return {label: Path(root) for label, root in settings.MODEL_ROOTS.items()}


def catalogue(model_roots=None):
    """{name: BaseModel} for every directory with a config.json under the roots."""
    found = {}
    for label, root in (model_roots if model_roots is not None else roots()).items():
        root = Path(root)
        if not root.is_dir():
            continue
        for path in _model_dirs(root):
            name = label if path == root else f"{label}/{path.relative_to(root).as_posix()}"
            found.setdefault(name, BaseModel(name, path, _read_json(path / "config.json")))
    return dict(sorted(found.items()))


def _model_dirs(root):
    if (root / "config.json").is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < SCAN_DEPTH else []
        if "config.json" in filenames and depth > 0:
            dirnames[:] = []
            yield Path(dirpath)


def get(name, model_roots=None):
    """The catalogue entry called `name`, inspected; raises ModelDirError."""
    entry = catalogue(model_roots).get(name)
    if entry is None:
        raise ModelDirError(f"no base model called {name!r} under the configured model roots")
    inspect(entry.path)
    return entry


def inspect(path):
    """Refuse a directory that is missing, has no safetensors weights, or asks for remote code."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} is missing")
    if not (path / "config.json").is_file():
        raise ModelDirError(f"model directory {path} has no config.json")
    for config_name in ("config.json", "tokenizer_config.json"):
        config = _read_json(path / config_name) if (path / config_name).is_file() else {}
        hooks = [key for key in REMOTE_CODE_KEYS if key in config]
        if hooks:
            raise ModelDirError(f"{config_name} in {path.name} asks for remote code ({', '.join(hooks)}); "
                                "Lifecycle never runs code shipped with a model")
    names = [p.name for p in path.iterdir() if p.is_file()]
    if not any(n.endswith(".safetensors") for n in names):
        if any(n.endswith(PICKLE_SUFFIXES) for n in names):
            raise ModelDirError(f"{path.name} has only pickle weights ({', '.join(n for n in names if n.endswith(PICKLE_SUFFIXES))}); "
                                "Lifecycle loads safetensors only — convert the weights first")
        raise ModelDirError(f"{path.name} has no weights (no .safetensors file)")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path.name} in {path.parent.name} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path.name} in {path.parent.name} is not a JSON object")
    return data


_hash_cache = {}


def directory_sha256(path):
    """One hash for a model directory: sha256 over each file's relative path and sha256.

    Cached by the files' sizes and mtimes, so a second run on the same model costs a stat."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    stamp = tuple((p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(path), stamp)
    if key not in _hash_cache:
        outer = hashlib.sha256()
        for p in files:
            outer.update(f"{p.relative_to(path).as_posix()}\0{_file_sha256(p)}\n".encode())
        _hash_cache[key] = outer.hexdigest()
    return _hash_cache[key]


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def module_names(entry):
    """Names of the model's modules that hold weights, read from the safetensors headers
    (a few kilobytes: no torch import, no weights loaded). Enough to check target modules,
    which peft matches by name suffix and which always hold weights."""
    names = set()
    for path in sorted(Path(entry.path).glob("*.safetensors")):
        for key in safetensors_header(path):
            parts = key.split(".")[:-1]  # drop "weight" / "bias"
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def linear_names(entry):
    """Short names of the layers with 2-D weights (what LoRA and IA3 can target), for messages."""
    names = set()
    for path in sorted(Path(entry.path).glob("*.safetensors")):
        for key, info in safetensors_header(path).items():
            if key.endswith(".weight") and len(info.get("shape", [])) == 2 and "embed" not in key:
                names.add(key.rsplit(".", 2)[-2])
    return sorted(names)


def safetensors_header(path):
    """{tensor name: {dtype, shape, offsets}} from a safetensors file's JSON header."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size < 100 * 1024**2:
            raise ModelDirError(f"{path.name} is not a safetensors file")
        header = json.loads(f.read(size))
    return {key: value for key, value in header.items() if key != "__metadata__"}


def has_module(names, target):
    """peft's rule: a target matches a module whose name is it or ends with ".target"."""
    return target in names or any(name.endswith("." + target) for name in names)
