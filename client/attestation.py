"""Verify an AWS Nitro Enclaves attestation document, failing closed.

A document is an (untagged or tag-18) COSE_Sign1 array
`[protected, unprotected, payload, signature]`. The ES384 signature covers
`Sig_structure = ["Signature1", protected, b"", payload]` with the payload bytes exactly as
received: re-encoding the decoded map could change its bytes (indefinite-length maps, key order)
and so verify something the signer never signed.

The certificate chain runs `cabundle[0]` (the root) -> ... -> `cabundle[-1]` -> `certificate` (the
leaf that signs). cryptography's X.509 policy verifier rejects AWS's chains (the leaf carries no
Authority Key Identifier), so each link is checked explicitly: issuer name, signature, CA flag, and
validity at the verification time. The root is pinned by the SHA-256 fingerprint of its DER.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from client.errors import VerificationError

AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
AWS_NITRO_ROOT_G1_PEM = Path(__file__).resolve().parent / "data" / "aws_nitro_root_g1.pem"

COSE_SIGN1_TAG = 18
COSE_HEADER_ALG = 1
COSE_ALG_ES384 = -35
ES384_SIGNATURE_BYTES = 96
SHA384_BYTES = 48
# PCR0..2 (image, kernel+bootstrap, application) are all zero only in debug mode, where the
# enclave's memory is readable by the parent: such a document proves nothing about what runs.
DEBUG_PCRS = (0, 1, 2)
MAX_PCR_INDEX = 31
OPTIONAL_BYTES_FIELDS = ("public_key", "user_data", "nonce")


@dataclass(frozen=True)
class AttestationResult:
    """What a verified document says. Only returned when every check held."""

    module_id: str
    timestamp: dt.datetime
    digest: str
    pcrs: dict[int, bytes]
    certificate: bytes  # DER of the leaf that signed the document
    cabundle: list[bytes]  # DER, root first
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    debug_mode: bool
    root_sha256: str
    pcrs_checked: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "module_id": self.module_id,
            "timestamp": self.timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "digest": self.digest,
            "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
            "public_key": self.public_key.hex() if self.public_key else None,
            "user_data": self.user_data.hex() if self.user_data else None,
            "nonce": self.nonce.hex() if self.nonce else None,
            "debug_mode": self.debug_mode,
            "root_sha256": self.root_sha256,
            "pcrs_checked": self.pcrs_checked,
        }


def load_pinned_root() -> x509.Certificate:
    """The AWS Nitro Enclaves Root-G1 shipped with the client, checked against its fingerprint."""
    cert = x509.load_pem_x509_certificate(AWS_NITRO_ROOT_G1_PEM.read_bytes())
    actual = cert.fingerprint(hashes.SHA256()).hex()
    if actual != AWS_NITRO_ROOT_G1_SHA256:
        raise VerificationError(
            f"the bundled AWS Nitro root {AWS_NITRO_ROOT_G1_PEM} has fingerprint {actual}, "
            f"expected {AWS_NITRO_ROOT_G1_SHA256}; reinstall the client")
    return cert


def verify_attestation(
    document: bytes,
    *,
    at: dt.datetime | None = None,
    expected_pcrs: Mapping[int, bytes] | None = None,
    nonce: bytes | None = None,
    root_pem: bytes | str | None = None,
    allow_debug: bool = False,
) -> AttestationResult:
    """Verify `document` completely or raise `VerificationError` naming the first check that failed.

    `at` is the time the certificates must be valid at (default: now). `root_pem` replaces the
    pinned AWS root (the local simulation's development root). A debug-mode document is refused
    unless `allow_debug`.
    """
    when = _as_utc(at) if at is not None else dt.datetime.now(dt.UTC)
    root = _load_root(root_pem)
    protected, payload, signature = _split_cose_sign1(document)
    fields = _parse_payload(payload)

    chain = _load_chain(fields["cabundle"], fields["certificate"])
    root_der = root.public_bytes(serialization.Encoding.DER)
    if not hmac.compare_digest(fields["cabundle"][0], root_der):
        got = hashlib.sha256(fields["cabundle"][0]).hexdigest()
        want = hashlib.sha256(root_der).hexdigest()
        raise VerificationError(
            f"the document's root certificate (SHA-256 {got}) is not the trusted root ({want}); "
            "a document from the local simulation needs --root with the development root")
    try:
        _verify_chain(chain, when)
    except _NotValidThen as exc:
        # The next whole second: a time a shell can pass back, still within the chain's validity.
        made = dt.datetime.fromtimestamp(-(-fields["timestamp"] // 1000), dt.UTC)
        stamp = made.isoformat(timespec="seconds").replace("+00:00", "Z")
        raise VerificationError(f"{exc}; the document was made at {stamp}: --at {stamp} verifies "
                                "it as of then") from None
    _verify_signature(chain[-1], protected, payload, signature)

    pcrs = fields["pcrs"]
    missing = [i for i in DEBUG_PCRS if i not in pcrs]
    if missing:
        raise VerificationError(f"the document has no PCR{missing[0]}: every NSM reports PCR0-2")
    debug_mode = all(not any(pcrs[i]) for i in DEBUG_PCRS)
    if debug_mode and not allow_debug:
        raise VerificationError(
            "the document comes from an enclave in debug mode (PCR0, PCR1 and PCR2 are all zero): "
            "its memory is visible to the host, so it proves nothing; pass --allow-debug only for "
            "development")
    checked = _check_pcrs(pcrs, expected_pcrs or {})
    if nonce is not None:
        got_nonce = fields["nonce"]
        if got_nonce is None or not hmac.compare_digest(got_nonce, nonce):
            raise VerificationError(
                f"nonce mismatch: expected {nonce.hex()}, the document carries "
                f"{got_nonce.hex() if got_nonce else 'none'}; the document is a replay or answers "
                "another request")
    return AttestationResult(
        module_id=fields["module_id"],
        timestamp=dt.datetime.fromtimestamp(fields["timestamp"] / 1000, dt.UTC),
        digest=fields["digest"],
        pcrs=pcrs,
        certificate=fields["certificate"],
        cabundle=list(fields["cabundle"]),
        public_key=fields["public_key"],
        user_data=fields["user_data"],
        nonce=fields["nonce"],
        debug_mode=debug_mode,
        root_sha256=hashlib.sha256(root_der).hexdigest(),
        pcrs_checked=checked,
    )


def _as_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise VerificationError(f"verification time {value.isoformat()} has no time zone; give UTC")
    return value.astimezone(dt.UTC)


def _load_root(root_pem: bytes | str | None) -> x509.Certificate:
    if root_pem is None:
        return load_pinned_root()
    data = root_pem.encode() if isinstance(root_pem, str) else root_pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise VerificationError(f"the given root is not a PEM certificate: {exc}") from None


def _split_cose_sign1(document: bytes) -> tuple[bytes, bytes, bytes]:
    try:
        message = cbor2.loads(document)
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise VerificationError(f"the document is not CBOR: {exc}") from None
    if isinstance(message, cbor2.CBORTag):
        if message.tag != COSE_SIGN1_TAG:
            raise VerificationError(f"the document has CBOR tag {message.tag}, expected COSE_Sign1 "
                                    f"({COSE_SIGN1_TAG}) or none")
        message = message.value
    if not (isinstance(message, list | tuple) and len(message) == 4):
        raise VerificationError("the document is not a COSE_Sign1 array of 4 elements")
    protected, unprotected, payload, signature = message
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        raise VerificationError("COSE_Sign1 protected header and payload must be byte strings")
    if not isinstance(unprotected, Mapping):
        raise VerificationError("COSE_Sign1 unprotected header must be a map")
    if not isinstance(signature, bytes) or len(signature) != ES384_SIGNATURE_BYTES:
        raise VerificationError(
            f"COSE_Sign1 signature must be {ES384_SIGNATURE_BYTES} bytes (ES384 r||s)")
    try:
        header = cbor2.loads(protected)
    except Exception as exc:
        raise VerificationError(f"COSE protected header is not CBOR: {exc}") from None
    if not isinstance(header, dict) or header.get(COSE_HEADER_ALG) != COSE_ALG_ES384:
        raise VerificationError(
            f"COSE protected header {header!r} does not declare ES384 (alg -35); only ES384 is "
            "accepted")
    return protected, payload, signature


def _parse_payload(payload: bytes) -> dict[str, Any]:
    """The payload's fields, each checked for type and shape; anything else is refused."""
    doc = _payload_map(payload)
    return {
        "module_id": _module_id(doc),
        "digest": _digest(doc),
        "timestamp": _timestamp(doc),
        "pcrs": _pcrs(doc),
        "certificate": _certificate(doc),
        "cabundle": _cabundle(doc),
        **_optional_bytes(doc),
    }


def _payload_map(payload: bytes) -> dict[Any, Any]:
    try:
        doc = cbor2.loads(payload)
    except Exception as exc:
        raise VerificationError(f"the attestation payload is not CBOR: {exc}") from None
    if not isinstance(doc, dict):
        raise VerificationError("the attestation payload is not a map")
    return doc


def _module_id(doc: dict[Any, Any]) -> str:
    module_id = doc.get("module_id")
    if not isinstance(module_id, str) or not module_id:
        raise VerificationError("the attestation payload has no module_id")
    return module_id


def _digest(doc: dict[Any, Any]) -> str:
    if doc.get("digest") != "SHA384":
        raise VerificationError(f"the attestation digest is {doc.get('digest')!r}, expected SHA384")
    return "SHA384"


def _timestamp(doc: dict[Any, Any]) -> int:
    timestamp = doc.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp <= 0:
        raise VerificationError("the attestation payload has no valid timestamp")
    return timestamp


def _pcrs(doc: dict[Any, Any]) -> dict[int, bytes]:
    pcrs = doc.get("pcrs")
    if not isinstance(pcrs, dict) or not pcrs:
        raise VerificationError("the attestation payload has no pcrs map")
    clean: dict[int, bytes] = {}
    for index, value in pcrs.items():
        if not isinstance(index, int) or not 0 <= index <= MAX_PCR_INDEX:
            raise VerificationError(f"PCR index {index!r} is out of range 0..{MAX_PCR_INDEX}")
        if not isinstance(value, bytes) or len(value) != SHA384_BYTES:
            raise VerificationError(f"PCR{index} is not a {SHA384_BYTES}-byte SHA-384 value")
        clean[index] = value
    return clean


def _certificate(doc: dict[Any, Any]) -> bytes:
    certificate = doc.get("certificate")
    if not isinstance(certificate, bytes) or not certificate:
        raise VerificationError("the attestation payload has no signing certificate")
    return certificate


def _cabundle(doc: dict[Any, Any]) -> list[bytes]:
    cabundle = doc.get("cabundle")
    if (not isinstance(cabundle, list) or not cabundle
            or not all(isinstance(c, bytes) and c for c in cabundle)):
        raise VerificationError("the attestation payload has no cabundle of DER certificates")
    return cabundle


def _optional_bytes(doc: dict[Any, Any]) -> dict[str, bytes | None]:
    """public_key, user_data, nonce: bytes or absent."""
    out: dict[str, bytes | None] = {}
    for name in OPTIONAL_BYTES_FIELDS:
        value = doc.get(name)
        if value is not None and not isinstance(value, bytes):
            raise VerificationError(f"attestation field {name} must be bytes or null")
        out[name] = value or None  # real NSMs send absent values as null or as b""
    return out


def _load_chain(cabundle: list[bytes], leaf: bytes) -> list[x509.Certificate]:
    chain = []
    for position, der in enumerate([*cabundle, leaf]):
        name = "the leaf certificate" if position == len(cabundle) else f"cabundle[{position}]"
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise VerificationError(f"{name} is not a DER certificate: {exc}") from None
    return chain


class _NotValidThen(VerificationError):
    """A certificate of the chain is not valid at the verification time."""


def _verify_chain(chain: list[x509.Certificate], when: dt.datetime) -> None:
    """Root first, leaf last. Every link: issuer CA flag and path length, issuer name and
    signature, and every certificate valid at `when`. The root must sign itself."""
    last = len(chain) - 1
    for position, cert in enumerate(chain):
        name = "the leaf certificate" if position == last else f"cabundle[{position}]"
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            raise _NotValidThen(
                f"{name} ({cert.subject.rfc4514_string()}) is valid from "
                f"{cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()}"
                f", not at {when.isoformat()}; an old document verifies only as of its own time "
                "(--at)")
        if position < last:
            try:
                constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                constraints = None
            if constraints is None or not constraints.ca:
                raise VerificationError(f"{name} issues a certificate but is not a CA")
            # path_length bounds the CA certificates below this one (the leaf does not count)
            cas_below = last - 1 - position
            if constraints.path_length is not None and cas_below > constraints.path_length:
                raise VerificationError(f"{name} has {cas_below} CAs below it, more than its "
                                        f"path length {constraints.path_length}")
        _check_key_usage(cert, name, ca=position < last)
        issuer = chain[position - 1] if position else cert
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise VerificationError(
                f"{name} is not validly signed by "
                f"{'itself' if position == 0 else f'cabundle[{position - 1}]'} "
                f"({str(exc) or 'bad signature'}); the chain was altered or reordered") from None
    leaf_key = chain[-1].public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or leaf_key.curve.name != "secp384r1":
        raise VerificationError("the signing certificate's key is not ECDSA P-384")


def _check_key_usage(cert: x509.Certificate, name: str, *, ca: bool) -> None:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ca and not usage.key_cert_sign:
        raise VerificationError(f"{name} issues a certificate but its key usage forbids it")
    if not ca and not usage.digital_signature:
        raise VerificationError(f"{name} signs the document but its key usage forbids it")


def _verify_signature(leaf: x509.Certificate, protected: bytes, payload: bytes,
                      signature: bytes) -> None:
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    half = ES384_SIGNATURE_BYTES // 2
    der_signature = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                         int.from_bytes(signature[half:], "big"))
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # checked in _verify_chain
    try:
        key.verify(der_signature, sig_structure, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise VerificationError(
            "the COSE signature does not verify with the leaf certificate's key: the document "
            "was altered after signing") from None


def _check_pcrs(pcrs: Mapping[int, bytes], expected: Mapping[int, bytes]) -> list[int]:
    for index, want in sorted(expected.items()):
        got = pcrs.get(index)
        if got is None:
            raise VerificationError(f"PCR{index} is expected but absent from the document")
        if not hmac.compare_digest(got, want):
            raise VerificationError(
                f"PCR{index} is {got.hex()}, expected {want.hex()}: the enclave runs a different "
                "image (or signer) than the one you trust")
    return sorted(expected)
