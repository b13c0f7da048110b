"""Single-core throughput of the PII scanner on generated ~100-character rows.

    python bench/pii_bench.py --rows 200000 --pii-share 0.05

Generates support-ticket-like rows (prices, dates, order numbers, versions, product names,
capitalised sentence starts: the things that look a little like PII), puts one PII value of
a random kind into --pii-share of them, then times scan_many() plus PiiReport.add() over all
rows, best of --repeat runs. Prints rows/s overall, for the clean rows alone and for the PII
rows alone, the share of planted values found (a planted IP right after a decoy
"version" is rightly not found), and how many clean rows were flagged.
"""
import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

WORDS = (
    "the a my our your this that it is was be been order item product delivery package support "
    "team refund return account login password reset please thanks hello hi again still not "
    "working broken arrived late early today yesterday tomorrow week month price total invoice "
    "payment charged twice screen battery update app version install error message page click "
    "button send sent received email number phone address store online customer service help "
    "issue problem fixed quickly great good bad slow fast very really quite and or but with for "
    "from to in on at by about after before when where why how what which who"
).split()

# Things that look a little like PII and must stay cheap: each row gets one or two.
DECOYS = (
    lambda r: f"order {r.randint(10000000, 99999999)}",
    lambda r: f"on 2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    lambda r: f"${r.randint(1, 999)}.{r.randint(0, 99):02d}",
    lambda r: f"version {r.randint(1, 20)}.{r.randint(0, 9)}.{r.randint(0, 30)}",
    lambda r: f"{r.randint(1, 12)}:{r.randint(0, 59):02d} pm",
    lambda r: f"SKU {''.join(r.choices('ABCDEFGHJKLMNPQRSTUVWXYZ0123456789', k=10))}",
    lambda r: r.choice(("New York", "Amazon Prime", "Google Pixel", "Black Friday", "Customer Care")),
    lambda r: f"{r.randint(2, 48)} hours",
)

PLANTED = (
    ("EMAIL", lambda r: f"{r.choice(('jane', 'li.wei', 'o.brien'))}{r.randint(1, 99)}@example.com"),
    ("PHONE", lambda r: f"+44 20 7946 {r.randint(1000, 9999)}"),
    ("PHONE", lambda r: f"(415) 555-{r.randint(1000, 9999)}"),
    ("CREDIT_CARD", lambda r: r.choice(("4242 4242 4242 4242", "5555-5555-5555-4444", "378282246310005"))),
    ("IBAN", lambda r: r.choice(("DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"))),
    ("US_SSN", lambda r: f"{r.randint(100, 665)}-{r.randint(10, 99)}-{r.randint(1000, 9999)}"),
    ("IP_ADDRESS", lambda r: f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"),
    ("API_KEY", lambda r: "AKIA" + "".join(r.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", k=16))),
    ("SECRET", lambda r: "".join(r.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", k=32))),
    ("PERSON", lambda r: f"{r.choice(('Mary', 'James', 'Linda', 'Robert'))} {r.choice(('Smith', 'Garcia', 'Nguyen'))}"),
)


def make_row(rng, planted=None):
    words = rng.choices(WORDS, k=rng.randint(11, 16))
    words[0] = words[0].capitalize()
    for _ in range(rng.randint(1, 2)):
        words.insert(rng.randrange(1, len(words)), rng.choice(DECOYS)(rng))
    if planted:
        words.insert(rng.randrange(1, len(words)), planted)
    return " ".join(words) + rng.choice((".", "!", "?", ""))


def make_rows(count, pii_share, seed):
    rng = random.Random(seed)
    rows, kinds = [], []
    for _ in range(count):
        kind, value = None, None
        if rng.random() < pii_share:
            kind, make = rng.choice(PLANTED)
            value = make(rng)
        rows.append(make_row(rng, value))
        kinds.append(kind)
    return rows, kinds


def rows_per_second(pii, rows, repeat):
    best = float("inf")
    for _ in range(repeat):
        report = pii.PiiReport()
        started = time.perf_counter()
        for i, found in enumerate(pii.scan_many(rows)):
            report.add(i, found)
        best = min(best, time.perf_counter() - started)
    return len(rows) / best, report


def measure(pii, rows, kinds, repeat):
    overall, report = rows_per_second(pii, rows, repeat)
    clean = [row for row, kind in zip(rows, kinds) if kind is None]
    planted = [(row, kind) for row, kind in zip(rows, kinds) if kind]
    clean_rate, clean_report = rows_per_second(pii, clean, repeat)
    pii_rate, _ = rows_per_second(pii, [row for row, _ in planted], repeat)
    found = sum(kind in {m.kind for m in pii.scan(row)} for row, kind in planted)
    return {
        "rows": len(rows),
        "mean_chars": round(sum(map(len, rows)) / len(rows), 1),
        "pii_rows": len(planted),
        "rows_per_s": round(overall),
        "clean_rows_per_s": round(clean_rate),
        "pii_rows_per_s": round(pii_rate),
        "planted_recall": round(found / max(len(planted), 1), 4),
        "clean_rows_flagged": clean_report.rows_with_pii,
        "counts": report.counts,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pii-share", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from lifecycle.datasets import pii

    rows, kinds = make_rows(args.rows, args.pii_share, args.seed)
    pii.scan("Mary Smith")  # load the census name lists outside the timing
    results = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
    print(json.dumps(results | measure(pii, rows, kinds, args.repeat), indent=2))


if __name__ == "__main__":
    main()
