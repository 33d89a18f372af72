"""The local simulation's development certificate chain (ECDSA P-384, like AWS's).

Created at first use under `<state>/pki/` and reused afterwards, so documents signed by one process
verify in another (the simulated KMS, `verify-attestation --root`). The shape mirrors a real
document's: root (self-signed, in `cabundle[0]`) -> intermediate (`cabundle[1]`) -> leaf (signs
the COSE_Sign1). None of this is trusted outside the simulation: the verifier accepts the
development root only when it is given explicitly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT_YEARS = 30
INTERMEDIATE_YEARS = 10
LEAF_DAYS = 365
# a leaf closer than this to expiry is replaced, so a long-lived state dir keeps working
LEAF_RENEW_BEFORE = dt.timedelta(days=7)


@dataclass(frozen=True)
class DevelopmentPki:
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    directory: Path

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    @property
    def root_path(self) -> Path:
        return self.directory / "root.pem"

    def cabundle(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in (self.root, self.intermediate)]

    def leaf_der(self) -> bytes:
        return self.leaf.public_bytes(serialization.Encoding.DER)


def pki_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "pki"


def load_root_pem(state_dir: Path) -> bytes:
    """The development root PEM, creating the chain if this state dir has none yet."""
    return load_or_create(state_dir).root_pem


def load_or_create(state_dir: Path, *, now: dt.datetime | None = None) -> DevelopmentPki:
    """The chain under `<state_dir>/pki/`, created (or its leaf renewed) under a file lock."""
    now = now or dt.datetime.now(dt.UTC)
    directory = pki_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(directory / ".lock"):
        if not (directory / "root.pem").exists():
            _create_all(directory, now)
        pki = _load(directory)
        if pki.leaf.not_valid_after_utc - now < LEAF_RENEW_BEFORE:
            inter_key = _read_key(directory / "intermediate.key")
            _write_leaf(directory, pki.intermediate, inter_key, now)
            pki = _load(directory)
    return pki


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sealed enclave local simulation"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
                 issuer_key: ec.EllipticCurvePrivateKey, *, start: dt.datetime,
                 lifetime: dt.timedelta, ca: bool, path_length: int | None) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=5))
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA384())


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _create_all(directory: Path, now: dt.datetime) -> None:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _certificate("sealed-sim.nitro-enclaves root", root_key, None, root_key, start=now,
                        lifetime=dt.timedelta(days=365 * ROOT_YEARS), ca=True, path_length=None)
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = _certificate("sealed-sim.nitro-enclaves intermediate", inter_key, root, root_key,
                         start=now, lifetime=dt.timedelta(days=365 * INTERMEDIATE_YEARS), ca=True,
                         path_length=0)
    _write_private(directory / "root.key", root_key)
    _write_private(directory / "intermediate.key", inter_key)
    _write_cert(directory / "intermediate.pem", inter)
    _write_leaf(directory, inter, inter_key, now)
    # root.pem last: its presence marks the chain complete
    _write_cert(directory / "root.pem", root)


def _write_leaf(directory: Path, inter: x509.Certificate, inter_key: ec.EllipticCurvePrivateKey,
                now: dt.datetime) -> None:
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    leaf = _certificate("sealed-sim enclave", leaf_key, inter, inter_key, start=now,
                        lifetime=dt.timedelta(days=LEAF_DAYS), ca=False, path_length=None)
    _write_private(directory / "leaf.key", leaf_key)
    _write_cert(directory / "leaf.pem", leaf)


def _load(directory: Path) -> DevelopmentPki:
    def cert(name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())
    return DevelopmentPki(root=cert("root"), intermediate=cert("intermediate"), leaf=cert("leaf"),
                          leaf_key=_read_key(directory / "leaf.key"), directory=directory)
