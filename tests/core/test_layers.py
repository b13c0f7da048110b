"""Dependencies point one way (DESIGN.md): tour → monitoring → deployments → registry →
labeling → runs → datasets → core → lib. A lower app never imports a higher one, not even
inside a function; signals, registries of hooks or a small function in the higher app join them."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "lifecycle"
ORDER = ["lib", "core", "datasets", "runs", "labeling", "registry", "deployments", "monitoring", "tour"]


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_no_app_imports_one_above_it():
    rank = {app: i for i, app in enumerate(ORDER)}
    assert {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(ORDER)
    upward = []
    for path in ROOT.rglob("*.py"):
        app = path.relative_to(ROOT).parts[0]
        if app not in rank:
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "lifecycle" and len(parts) > 1 and rank.get(parts[1], -1) > rank[app]:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []
