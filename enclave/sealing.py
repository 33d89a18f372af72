"""Sealed application bundles: seal a directory into one ESDK message, unseal one into a directory.

The format and the SDK's setup are `enclave/bundle_format.py`'s; the parts below these two
entry points are `enclave/tar_stream.py` (the tar producer), `enclave/readahead.py` (the
read-ahead reader), `enclave/tar_extract.py` (the extractor), `enclave/sdk_errors.py` (the SDK's
and the key service's errors in words) and `enclave/allocator.py` (glibc tuning).

Streaming decryption releases plaintext frame by frame: a bad frame, a missing final frame or a
truncated stream is detected only when the reader gets there, after earlier frames' plaintext
was handed out. `unseal_bundle` therefore writes into a staging directory, moves members into
the target only after the whole message verified, and removes everything on any failure.

Memory stays constant: sealing reads files in fixed chunks and feeds the SDK through a reader
that produces the tar stream on demand (no temporary plaintext file, no thread, no pipe);
unsealing takes the plaintext one frame at a time, parses headers with `tarfile` and writes
member contents straight from the frames.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError, DecryptKeyError
from aws_encryption_sdk.identifiers import ContentType
from aws_encryption_sdk.key_providers.base import MasterKeyProvider
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidSignature, InvalidTag

from enclave.allocator import tune_allocator
from enclave.bundle_format import (
    ALGORITHM,
    BUNDLE_FORMAT,
    FRAME_LENGTH,
    MAX_FRAME_LENGTH,
    BundleError,
    SealError,
    UnsealError,
    bundle_encryption_context,
    esdk_client,
)
from enclave.manifest import (
    APP_ID_PATTERN,
    APP_VERSION_PATTERN,
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    load_manifest,
)
from enclave.readahead import PrefetchingReader
from enclave.sdk_errors import describe_error, key_service_errors, key_service_suffix
from enclave.tar_extract import extract_bundle
from enclave.tar_stream import (
    ChunkReader,
    ProgressCallback,
    collect_entries,
    file_identity,
    tar_stream,
)


@dataclass(frozen=True)
class SealResult:
    app_id: str
    app_version: str
    files: int
    directories: int
    plaintext_bytes: int  # file contents only
    tar_bytes: int
    ciphertext_bytes: int
    message_id: str  # hex, from the ESDK header
    encryption_context: dict[str, str]


def seal_directory(
    source: Path,
    out: BinaryIO,
    *,
    key_provider: MasterKeyProvider,
    app_id: str | None = None,
    app_version: str | None = None,
    progress: ProgressCallback | None = None,
) -> SealResult:
    """Seal `source` (an application directory with `manifest.json`) into `out`.

    `app_id` / `app_version` default to the manifest's; if given they must equal it, so a build
    cannot label a bundle with something its manifest does not say. `progress(done, total)` is
    called with file bytes sealed so far. Raises `SealError` (or `ManifestError`).
    """
    source = Path(source)
    if not source.is_dir():
        raise SealError(f"{source} is not a directory: give the application directory")
    manifest = load_manifest(source / MANIFEST_NAME)
    for label, given, declared in (
        ("app id", app_id, manifest.app_id),
        ("app version", app_version, manifest.app_version),
    ):
        if given is not None and given != declared:
            raise SealError(
                f"{label} {given!r} does not match the manifest's {declared!r}: "
                f"change {source / MANIFEST_NAME} or drop the option"
            )
    entries = collect_entries(source, file_identity(out))
    tune_allocator()
    total = sum(e.size for e in entries)
    context = bundle_encryption_context(manifest.app_id, manifest.app_version)
    reader = ChunkReader(tar_stream(entries, total, progress))
    written = 0
    with key_service_errors() as causes:
        try:
            encryptor = esdk_client().stream(
                mode="e",
                source=reader,
                key_provider=key_provider,
                encryption_context=context,
                algorithm=ALGORITHM,
                frame_length=FRAME_LENGTH,
            )
            while chunk := encryptor.read(FRAME_LENGTH):
                out.write(chunk)
                written += len(chunk)
            header = encryptor.header
            encryptor.close()
        except (AWSEncryptionSDKClientError, BotoCoreError, ClientError) as exc:
            raise SealError(f"encryption failed: {describe_error(exc)}"
                            f"{key_service_suffix(causes)}") from exc
    return SealResult(
        app_id=manifest.app_id,
        app_version=manifest.app_version,
        files=sum(1 for e in entries if not e.is_dir),
        directories=sum(1 for e in entries if e.is_dir),
        plaintext_bytes=total,
        tar_bytes=reader.produced,
        ciphertext_bytes=written,
        message_id=header.message_id.hex(),
        encryption_context=context,
    )


def unseal_bundle(
    src: BinaryIO,
    target: Path,
    *,
    key_provider: MasterKeyProvider,
    expected_app_id: str | None = None,
    expected_app_version: str | None = None,
) -> Manifest:
    """Decrypt and extract a bundle into `target` (created if missing, else it must be empty).

    Order of checks: the header's algorithm, frame length and encryption context (format,
    expected app id / version) before any byte is written; each tar member confined (regular
    files and directories only, relative names without `..`); the first member must be a
    valid manifest whose app id and version equal the encryption context's; the message's
    final frame; no bytes after the message. Members are written into a staging
    directory inside `target` and moved into place only after all of that passed; on any
    failure everything written (and `target` itself, if this call created it) is removed.

    File modes are normalized to owner-only (0700 for directories and executables, 0600
    otherwise). Returns the validated manifest. Raises `UnsealError`.
    """
    target = Path(target)
    created_target = _prepare_target(target)
    tune_allocator()
    staging: Path | None = None
    reader = PrefetchingReader(src)
    try:
        decryptor = esdk_client().stream(
            mode="d",
            source=reader,
            key_provider=key_provider,
            max_body_length=MAX_FRAME_LENGTH,
        )
        header = _read_header(decryptor)
        _check_header(header, expected_app_id, expected_app_version)
        staging = Path(tempfile.mkdtemp(prefix=".unseal-", dir=target))
        manifest = extract_bundle(decryptor, staging, header.frame_length)
        _check_manifest_matches(manifest, header.encryption_context)
        _finish_message(decryptor, reader)
        for child in staging.iterdir():
            os.rename(child, target / child.name)
        staging.rmdir()
        staging = None
        return manifest
    except BaseException as exc:
        _clean_up(target, staging, created_target)
        translated = _unseal_error(exc, target)
        if translated is exc:
            raise
        raise translated from exc
    finally:
        reader.close()


def _read_header(decryptor: Any) -> Any:
    """The message header, read (and its data key obtained) with the key service's causes."""
    with key_service_errors() as causes:
        try:
            return decryptor.header
        except DecryptKeyError as exc:
            if not causes:
                raise UnsealError(f"cannot open the bundle: {describe_error(exc)}") from exc
            # The SDK's own text ("Unable to decrypt any data key") hides the reason: the
            # key service's answer is the reason.
            raise UnsealError(f"cannot open the bundle: the key service did not release its "
                              f"data key: {'; '.join(causes)}") from exc
        except (AWSEncryptionSDKClientError, BotoCoreError, ClientError, InvalidTag) as exc:
            raise UnsealError(
                f"cannot open the bundle: {describe_error(exc)}{key_service_suffix(causes)}"
            ) from exc


def _check_manifest_matches(manifest: Manifest, context: dict[str, str]) -> None:
    if (manifest.app_id, manifest.app_version) != (context["app_id"], context["app_version"]):
        raise UnsealError(
            f"the bundle's manifest says {manifest.app_id} {manifest.app_version} but it "
            f"was sealed as {context['app_id']} {context['app_version']}: rejected"
        )


def _unseal_error(exc: BaseException, target: Path) -> BaseException:
    """What a failure while unsealing is raised as: our own errors and interrupts unchanged,
    the SDK's, tarfile's, the key service's and the file system's as an `UnsealError`."""
    if isinstance(exc, BundleError | KeyboardInterrupt | SystemExit):
        return exc
    if isinstance(exc, AWSEncryptionSDKClientError | InvalidTag | InvalidSignature):
        return UnsealError(f"the bundle is corrupt or was altered: {describe_error(exc)}")
    if isinstance(exc, tarfile.TarError | ManifestError):
        return UnsealError(f"the bundle's content is malformed: {describe_error(exc)}")
    if isinstance(exc, BotoCoreError | ClientError):
        return UnsealError(f"key service error: {describe_error(exc)}")
    if isinstance(exc, OSError):
        return UnsealError(f"cannot write into {target}: {describe_error(exc)}")
    return exc


def _prepare_target(target: Path) -> bool:
    try:
        target.mkdir(mode=0o700)
        return True
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsealError(f"cannot create {target}: {exc.strerror}") from None
    if target.is_symlink() or not target.is_dir():
        raise UnsealError(f"{target} exists and is not a directory")
    if any(target.iterdir()):
        raise UnsealError(f"{target} is not empty: unseal into a new or empty directory")
    return False


def _clean_up(target: Path, staging: Path | None, created_target: bool) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    if created_target:
        shutil.rmtree(target, ignore_errors=True)


def _check_header(header: Any, expected_app_id: str | None, expected_version: str | None) -> None:
    if header.algorithm != ALGORITHM:
        raise UnsealError(
            f"bundle uses algorithm suite {header.algorithm.name}, expected {ALGORITHM.name}"
        )
    if header.content_type != ContentType.FRAMED_DATA:
        raise UnsealError("bundle is not a framed message")
    context = dict(header.encryption_context)
    if set(context) != {"bundle_format", "app_id", "app_version"}:
        raise UnsealError(
            f"bundle encryption context has keys {sorted(context)}, expected "
            "app_id, app_version, bundle_format: this is not a sealed application bundle"
        )
    if context["bundle_format"] != BUNDLE_FORMAT:
        raise UnsealError(
            f"bundle format {context['bundle_format']!r} is not supported (expected "
            f"{BUNDLE_FORMAT!r}): use a matching runtime version"
        )
    if not APP_ID_PATTERN.fullmatch(context["app_id"]) or not APP_VERSION_PATTERN.fullmatch(
        context["app_version"]
    ):
        raise UnsealError("bundle encryption context has a malformed app_id or app_version")
    for label, expected, actual in (
        ("app_id", expected_app_id, context["app_id"]),
        ("app_version", expected_version, context["app_version"]),
    ):
        if expected is not None and expected != actual:
            raise UnsealError(
                f"bundle was sealed for {label} {actual!r}, expected {expected!r}: "
                "check that this is the bundle you meant"
            )


def _finish_message(decryptor: Any, src: PrefetchingReader) -> None:
    """Read the rest of the message so the final frame (and a footer, if any) is verified."""
    while decryptor.read(FRAME_LENGTH):
        pass  # zero padding after the tar end marker, still authenticated
    if not hasattr(decryptor, "footer"):
        raise UnsealError("the bundle ended before its final frame: it is truncated")
    decryptor.close()
    if src.read(1):
        raise UnsealError("unexpected bytes after the end of the bundle")
