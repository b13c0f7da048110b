# Sourced by the scripts: find Python 3.11 and make (or reuse) .venv in the repository root.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    echo "Lifecycle needs Python 3.11 (python3.11 or python3 on PATH)." >&2
    return 1
}

ensure_venv() {
    if [ ! -x .venv/bin/python ]; then
        "$(find_python)" -m venv .venv
        .venv/bin/python -m pip install --quiet --upgrade "pip>=24"
    fi
}

# Install the project with the given extras, skipping pip when pyproject.toml has not changed.
install_project() {
    local extras="$1" stamp=".venv/.installed-$1"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install --quiet -e ".[$extras]"
        touch "$stamp"
    fi
}
