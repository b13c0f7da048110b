"""The registry's signing key: an elliptic-curve (P-256) private key in a PEM file, named by
the SIGNING_KEY_FILE setting. No Django imports, so settings, the demo and the benchmarks
can make one before Django starts."""
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def create(path):
    """Write a new private key to `path` (mode 0600) unless one is there; return the path."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return path


def public_pem(private_key_path):
    """The public half of the key in `private_key_path`, as PEM bytes."""
    key = serialization.load_pem_private_key(Path(private_key_path).read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
