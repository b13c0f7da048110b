from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from lifecycle.lib import signing_keys
from lifecycle.registry import signing


class Command(BaseCommand):
    help = ("Make the registry's signing key (--create PATH: a new EC P-256 private key, never over an existing "
            "file) or print its public half (--public, or write it with --out FILE). With DEBUG off, settings "
            "refuse to start without a key, so make the first one with DEBUG=true.")
    # Making the first key comes before the rest of the configuration (database, Redis) is in place.
    requires_system_checks = []

    def add_arguments(self, parser):
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--create", metavar="PATH", help="write a new private key to PATH (mode 0600)")
        action.add_argument("--public", action="store_true", help="print the public key (PEM) of the configured key")
        parser.add_argument("--out", metavar="FILE", help="with --public: write the public key to FILE instead")

    def handle(self, *args, **options):
        if options["out"] and not options["public"]:
            raise CommandError("--out goes with --public")
        if options["create"]:
            self.create(Path(options["create"]))
        else:
            self.public(options["out"])

    def create(self, path):
        if path.exists():
            raise CommandError(f"{path} exists already; a signing key is never overwritten (versions signed with it "
                               "would no longer verify). Move it away first if you really mean to replace it.")
        try:
            signing_keys.create(path)
        except FileExistsError:  # made by someone else between the check and the write
            raise CommandError(f"{path} exists already; a signing key is never overwritten.") from None
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
        self.stdout.write(f"wrote a new signing key to {path}; set SIGNING_KEY_FILE={path.resolve()}")
        self.stdout.write(signing_keys.public_pem(path).decode("ascii"), ending="")

    def public(self, out):
        if not settings.SIGNING_PUBLIC_KEY_FILE and not (settings.SIGNING_KEY_FILE and Path(settings.SIGNING_KEY_FILE).is_file()):
            # Not public_key_pem() unguarded: with DEBUG on it would make a fresh key, whose public half means nothing.
            raise CommandError(f"no signing key at {settings.SIGNING_KEY_FILE or '(SIGNING_KEY_FILE is not set)'}; "
                               "make one with --create PATH")
        pem = signing.public_key_pem()
        if out:
            try:
                Path(out).write_bytes(pem)
            except OSError as exc:
                raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from None
            self.stderr.write(f"wrote the public key to {out}")
        else:
            self.stdout.write(pem.decode("ascii"), ending="")
