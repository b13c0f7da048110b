"""Throughput and peak memory of the configured artifact store.

    DJANGO_SETTINGS_MODULE=lifecycle.settings python bench/artifact_bench.py --mb 1024

Writes a generated stream of --mb MiB through get_store() (whichever backend the
environment selects: ARTIFACT_BACKEND, ARTIFACT_DIR, ARTIFACT_S3_*), reads it back with
verification, prints MB/s for both and the process's peak RSS, then deletes the artifact.
"""
import argparse
import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path

MiB = 1024 * 1024


class GeneratedFile:
    """A file object whose bytes are generated block by block, never held all at once."""

    def __init__(self, total_mb):
        self._blocks = self._generate(total_mb)
        self._pending = b""
        self.digest = hashlib.sha256()

    @staticmethod
    def _generate(total_mb):
        base = os.urandom(MiB)
        for i in range(total_mb):
            yield i.to_bytes(8, "big") + base[8:]  # every block differs, no dedup to help

    def read(self, n=-1):
        if not self._pending:
            self._pending = next(self._blocks, b"")
        n = len(self._pending) if n < 0 else n
        out, self._pending = self._pending[:n], self._pending[n:]
        self.digest.update(out)
        return out


def peak_rss_mb():
    # VmHWM is this process's own high-water mark; ru_maxrss can carry a parent's over exec.
    try:
        with open("/proc/self/status") as status:
            return int(next(l for l in status if l.startswith("VmHWM:")).split()[1]) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="size of the stream in MiB")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lifecycle.settings")
    from lifecycle.core.artifacts import get_store

    store = get_store()
    source = GeneratedFile(args.mb)
    info, write_s = timed(store.put_stream, source)
    assert info.sha256 == source.digest.hexdigest()
    _, read_s = timed(store.verify, info.sha256)
    store.delete(info.sha256)
    print(json.dumps({
        "backend": type(store).__name__,
        "mb": args.mb,
        "write_mb_s": round(args.mb / write_s, 1),
        "read_verify_mb_s": round(args.mb / read_s, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }))


if __name__ == "__main__":
    main()
