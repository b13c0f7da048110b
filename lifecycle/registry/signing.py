"""Signing and verifying model versions with the OpenSSF `model-signing` package.

A version is signed over its *materialized* output: the files the run's manifest lists, in
their folders, plus the manifest itself as `lifecycle-output.json` (so the base model's hash,
the method, config and metrics are covered too). The signer is a local private key
(SIGNING_KEY_FILE, EC P-256): no network, no transparency log. The result is a Sigstore bundle,
stored in the artifact store beside the version. Anyone holding the folder, the bundle and our
public key can check it with the package's own command line:

    model_signing verify key MODEL_DIR --signature model.sig --public_key signing-key.pub

Verification materializes the files afresh from the store (which re-hashes each on the way),
so an artifact altered on disk fails twice over: its content hash, then the signature.
"""
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from lifecycle.core.artifacts import ArtifactError, get_store
from lifecycle.lib import signing_keys
from lifecycle.runs import outputs

MANIFEST_NAME = "lifecycle-output.json"
BUNDLE_NAME = "model.sig"


class SigningError(Exception):
    pass


@dataclass
class Verification:
    ok: bool
    message: str

    def as_dict(self):
        return {"ok": self.ok, "message": self.message}


def private_key_path():
    path = Path(settings.SIGNING_KEY_FILE) if settings.SIGNING_KEY_FILE else None
    if path is None:
        raise SigningError("No signing key is configured (SIGNING_KEY_FILE); versions cannot be registered.")
    if not path.is_file():
        if not settings.DEBUG:
            raise SigningError(f"The signing key file {path} is missing.")
        signing_keys.create(path)  # a development machine makes its own
    return path


def public_key_pem():
    if settings.SIGNING_PUBLIC_KEY_FILE:
        return Path(settings.SIGNING_PUBLIC_KEY_FILE).read_bytes()
    return signing_keys.public_pem(private_key_path())


def materialize(output_key, folder):
    """Write the output's files and its manifest into `folder` (made empty first), each read
    through the store's hash check. Names come from our own manifest; each must still land
    inside `folder`."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    store = get_store()
    manifest = outputs.read_manifest(output_key)
    root = folder.resolve()
    for relative, sha in sorted(manifest["files"].items()):
        dest = (folder / relative).resolve()
        if root not in dest.parents or relative == MANIFEST_NAME:
            raise SigningError(f"the output's manifest names a file that cannot be placed: {relative!r}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        store.copy_to(sha, dest)
    (folder / MANIFEST_NAME).write_bytes(store.read_bytes(output_key))
    return folder


def sign_output(output_key):
    """Sign the output named by `output_key`; return the bundle's artifact key."""
    import model_signing

    key = private_key_path()
    with tempfile.TemporaryDirectory(prefix="lifecycle-sign-") as tmp:
        folder = materialize(output_key, Path(tmp) / "model")
        bundle = Path(tmp) / BUNDLE_NAME
        model_signing.signing.Config().use_elliptic_key_signer(private_key=key).sign(folder, bundle)
        return get_store().put_file(bundle).sha256


def verify_folder(folder, bundle_path):
    import model_signing

    with tempfile.NamedTemporaryFile(suffix=".pub") as public:
        public.write(public_key_pem())
        public.flush()
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public.name).verify(folder, bundle_path)
        except Exception as exc:  # the package raises ValueError and others, each with the reason
            return Verification(False, f"signature check failed: {_short(exc)}")
    return Verification(True, "signature valid: every file matches the signed digests")


def verify_output(output_key, bundle_key, folder=None):
    """Materialize the output (into `folder`, or a temporary one) and check its signature."""
    with tempfile.TemporaryDirectory(prefix="lifecycle-verify-") as tmp:
        target = Path(folder) if folder else Path(tmp) / "model"
        bundle = Path(tmp) / BUNDLE_NAME
        try:
            materialize(output_key, target)
            get_store().copy_to(bundle_key, bundle)
        except (ArtifactError, outputs.OutputError, SigningError, OSError) as exc:
            return Verification(False, f"artifact check failed: {_short(exc)}")
        return verify_folder(target, bundle)


def new_verified_folder():
    """A new, empty folder for one verified copy of an output (ModelVersion.load_checked)."""
    parent = Path(settings.MODEL_CACHE_DIR) / "verified"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent))


def _short(exc, limit=400):
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"
