#!/usr/bin/env python3
"""Check a Lifecycle governance export by hand: standard library only, no Lifecycle needed.

    python3 verify_export.py EXPORT.json            # the export's hash and its audit chain segment
    python3 verify_export.py EXPORT.json --unpack DIR
        # also write DIR/model.sig, DIR/signing-key.pub and DIR/model/lifecycle-output.json from
        # the export and print where to download each of the model's files, for
        # `model_signing verify key DIR/model --signature DIR/model.sig --public_key DIR/signing-key.pub`

What it checks (docs/registry-export.md says the same in prose):
  1. export_sha256 is sha256 over the canonical JSON of the document without that key;
  2. each included audit event's fields (all but "hash") hash to its "hash": sha256 of their
     canonical JSON (sorted keys, no spaces, UTF-8, non-ASCII as is);
  3. the chain segment is contiguous (seq from_seq..to_seq, no gaps), each link's prev_hash is
     the previous link's hash, and each included event is the link at its seq.
Exit status 0 when every check passes, 1 otherwise (each failure printed).
"""
import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path, PurePosixPath


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def check_document_hash(doc):
    body = {key: value for key, value in doc.items() if key != "export_sha256"}
    if sha256(canonical(body)) != doc.get("export_sha256"):
        return ["export_sha256 does not match the document: it was changed after export"]
    return []


def check_events(events):
    problems = []
    for event in events:
        fields = {key: value for key, value in event.items() if key != "hash"}
        if sha256(canonical(fields)) != event.get("hash"):
            problems.append(f"event #{event.get('seq')}: its fields do not hash to its hash (contents altered)")
    return problems


def check_segment(segment, events):
    problems = []
    links = segment.get("links") or []
    if not links:
        return [] if not events else ["the segment has no links but the export holds events"]
    if links[0]["seq"] != segment.get("from_seq") or links[-1]["seq"] != segment.get("to_seq"):
        problems.append("the segment's links do not run from from_seq to to_seq")
    for before, after in zip(links, links[1:]):
        if after["seq"] != before["seq"] + 1:
            problems.append(f"events #{before['seq'] + 1}..#{after['seq'] - 1} are missing from the segment")
        if after["prev_hash"] != before["hash"]:
            problems.append(f"link #{after['seq']}: prev_hash is not the hash of #{before['seq']}")
    by_seq = {link["seq"]: link for link in links}
    for event in events:
        link = by_seq.get(event.get("seq"))
        if link is None:
            problems.append(f"event #{event.get('seq')} is outside the segment")
        elif not link.get("included") or link["hash"] != event.get("hash") or link["prev_hash"] != event.get("prev_hash"):
            problems.append(f"event #{event.get('seq')} is not the link at its place in the chain")
    shown = {event.get("seq") for event in events}
    problems += [f"link #{link['seq']} is marked included but its event is not in the export"
                 for link in links if link.get("included") and link["seq"] not in shown]
    return problems


def verify(doc):
    audit = doc.get("audit") or {}
    events = audit.get("events") or []
    return check_document_hash(doc) + check_events(events) + check_segment(audit.get("segment") or {}, events)


def safe_relative(path):
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts


def unpack(doc, folder):
    """Write the signature inputs the export carries; print the files still to download."""
    signature = doc["signature"]
    folder = Path(folder)
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model.sig").write_bytes(base64.b64decode(signature["bundle"]["base64"]))
    (folder / "signing-key.pub").write_text(signature["public_key_pem"], encoding="ascii")
    manifest = base64.b64decode(signature["manifest"]["base64"])
    if sha256(manifest) != signature["manifest"]["sha256"]:
        raise SystemExit("the manifest in the export does not match its sha256")
    (folder / "model" / signature["manifest"]["name"]).write_bytes(manifest)
    print(f"wrote {folder / 'model.sig'}, {folder / 'signing-key.pub'}, {folder / 'model' / signature['manifest']['name']}")
    print("download each file into the model folder (HOST is your Lifecycle; TOKEN an API token):")
    for item in signature["files"]:
        if not safe_relative(item["path"]):
            raise SystemExit(f"the export names a file that cannot be placed: {item['path']!r}")
        print(f"  curl -fsS -H \"Authorization: Bearer $TOKEN\" --create-dirs -o '{folder / 'model' / item['path']}' "
              f"\"$HOST{item['download']}\"  # sha256 {item['sha256']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check a Lifecycle governance export (hash and audit chain segment).")
    parser.add_argument("export", help="the export's JSON file")
    parser.add_argument("--unpack", metavar="DIR", help="also write the signature files into DIR")
    args = parser.parse_args(argv)
    doc = json.loads(Path(args.export).read_text(encoding="utf-8"))
    problems = verify(doc)
    for problem in problems:
        print(f"FAIL: {problem}")
    segment = (doc.get("audit") or {}).get("segment") or {}
    events = (doc.get("audit") or {}).get("events") or []
    if problems:
        return 1
    print(f"OK: export hash matches; {len(events)} events recomputed; chain links "
          f"#{segment.get('from_seq')}..#{segment.get('to_seq')} ({len(segment.get('links') or [])}) all connect")
    at_export = (doc.get("audit") or {}).get("chain_verification") or {}
    print(f"at export the whole chain was {'intact' if at_export.get('intact') else 'BROKEN'}"
          f" through #{at_export.get('verified_through_seq')}")
    if args.unpack:
        unpack(doc, args.unpack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
