import re
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from lifecycle.lib.commands import user_named
from lifecycle.registry import export
from lifecycle.registry.models import ModelVersion

VERSION = re.compile(r"^(?P<slug>[-a-zA-Z0-9_]+)[:/](?P<number>[0-9]{1,9})$")


class Command(BaseCommand):
    help = ("Write a model version's governance export: the JSON document (default) or, with --html, the "
            "printable page. VERSION is SLUG:NUMBER or SLUG/NUMBER. docs/registry-export.md says how to check it.")

    def add_arguments(self, parser):
        parser.add_argument("version", metavar="VERSION", help="the version, e.g. intent-router:3")
        parser.add_argument("--out", required=True, metavar="FILE", help="where to write the export ('-' for stdout)")
        parser.add_argument("--html", action="store_true", help="write the printable page (CSS included) instead of JSON")
        parser.add_argument("--user", default="", help="the username recorded as the exporter (default: none)")

    def handle(self, *args, **options):
        version = self.version(options["version"])
        doc = export.build(version, user_named(options["user"]))
        text = export.html(doc, standalone=True) if options["html"] else export.dumps(doc)
        if options["out"] == "-":
            self.stdout.write(text, ending="")
        else:
            self.write(Path(options["out"]), text)
            self.stderr.write(f"wrote {options['out']} (export sha256 {doc[export.HASH_KEY]})")
        if not doc["signature"]["verification"]["ok"]:
            raise CommandError(f"exported, but {version} fails its signature check: {doc['signature']['verification']['message']}")

    @staticmethod
    def version(text):
        match = VERSION.match(text.strip())
        if match is None:
            raise CommandError(f"{text!r} names no version: write SLUG:NUMBER or SLUG/NUMBER, e.g. intent-router:3")
        version = ModelVersion.objects.for_listing().filter(model__slug=match["slug"], number=int(match["number"])).first()
        if version is None:
            raise CommandError(f"no version {match['number']} of a model {match['slug']!r}")
        return version

    @staticmethod
    def write(path, text):
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
