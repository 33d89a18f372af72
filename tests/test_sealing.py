"""Sealed bundles: round trips, tampering, and tar members that try to escape the target."""

import io
import json
import os
import platform
import stat
import tarfile
from pathlib import Path

import aws_encryption_sdk
import boto3
import botocore.session
import pytest
from aws_encryption_sdk.identifiers import (
    Algorithm,
    CommitmentPolicy,
    EncryptionKeyType,
    WrappingAlgorithm,
)
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.kms import StrictAwsKmsMasterKeyProvider
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
from moto import mock_aws

from enclave import sealing
from enclave.allocator import tune_allocator
from enclave.bundle_format import (
    ALGORITHM,
    SealError,
    UnsealError,
    bundle_encryption_context,
    kms_key_provider,
)
from enclave.manifest import MANIFEST_NAME, ManifestError
from enclave.sealing import seal_directory, unseal_bundle

MANIFEST = {
    "format": 1,
    "app_id": "demo-app",
    "app_version": "2.1.0",
    "entrypoints": {"run": {"command": ["python3", "main.py"], "args": []}},
}
CONTEXT = bundle_encryption_context("demo-app", "2.1.0")
SMALL_FRAME = 4096


class StaticRawProvider(RawMasterKeyProvider):
    """A raw AES-256 wrapping key, for tests that need no KMS."""

    provider_id = "test-static"

    def __init__(self, **kwargs):
        self._key = kwargs.get("key", b"")

    def _get_raw_key(self, key_id):
        return WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=self._key,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        )


def raw_provider(key: bytes = b"\x01" * 32) -> StaticRawProvider:
    provider = StaticRawProvider()
    provider._key = key
    provider.add_master_key(b"wrapping-key-1")
    return provider


@pytest.fixture
def provider():
    return raw_provider()


@pytest.fixture
def app_dir(tmp_path) -> Path:
    app = tmp_path / "app"
    (app / "model" / "empty").mkdir(parents=True)
    (app / MANIFEST_NAME).write_text(json.dumps(MANIFEST))
    (app / "main.py").write_text("print('hello')\n")
    (app / "main.py").chmod(0o755)
    (app / "model" / "weights.bin").write_bytes(os.urandom(3 * SMALL_FRAME + 123))
    (app / "zero.txt").write_bytes(b"")
    return app


@pytest.fixture
def small_frames(monkeypatch):
    """Many frames from little data, so frame-level tampering is cheap to set up."""
    monkeypatch.setattr(sealing, "FRAME_LENGTH", SMALL_FRAME)


def seal(app_dir: Path, provider, **kwargs) -> bytes:
    out = io.BytesIO()
    seal_directory(app_dir, out, key_provider=provider, **kwargs)
    return out.getvalue()


def unseal(bundle: bytes, target: Path, provider, **kwargs):
    return unseal_bundle(io.BytesIO(bundle), target, key_provider=provider, **kwargs)


def tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> content (None for directories)."""
    return {
        p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def esdk_encrypt(
    plaintext: bytes,
    provider,
    context: dict[str, str],
    *,
    algorithm: Algorithm = ALGORITHM,
    frame_length: int = SMALL_FRAME,
) -> bytes:
    """Encrypt with the plain SDK: lets tests build bundles the sealer itself would refuse."""
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    ciphertext, _ = client.encrypt(
        source=plaintext,
        key_provider=provider,
        encryption_context=context,
        algorithm=algorithm,
        frame_length=frame_length,
    )
    return ciphertext


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_member(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def special_member(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def manifest_member(manifest: dict = MANIFEST) -> tuple[tarfile.TarInfo, bytes]:
    return file_member(MANIFEST_NAME, json.dumps(manifest).encode())


def existing_target(tmp_path: Path) -> Path:
    """A target that exists before unsealing, so only the staging cleanup can empty it."""
    target = tmp_path / "out"
    target.mkdir(exist_ok=True)
    return target


def assert_nothing_left(target: Path) -> None:
    assert target.is_dir() and list(target.iterdir()) == []


# --- round trips --------------------------------------------------------------------------------


def test_round_trip_restores_the_directory(app_dir, provider, tmp_path):
    target = tmp_path / "out"
    manifest = unseal(seal(app_dir, provider), target, provider)
    assert manifest.app_id == "demo-app"
    assert tree(target) == tree(app_dir)


def test_round_trip_over_many_frames(app_dir, provider, tmp_path, small_frames):
    target = tmp_path / "out"
    unseal(seal(app_dir, provider), target, provider)
    assert tree(target) == tree(app_dir)


def test_long_and_non_ascii_names_round_trip(app_dir, provider, tmp_path):
    deep = app_dir / ("d" * 120) / "sub"
    deep.mkdir(parents=True)
    (deep / ("f" * 150 + ".txt")).write_text("long")
    (app_dir / "données-é.csv").write_text("x")
    target = tmp_path / "out"
    unseal(seal(app_dir, provider), target, provider)
    assert tree(target) == tree(app_dir)


def test_unsealed_modes_are_owner_only(app_dir, provider, tmp_path):
    (app_dir / "main.py").chmod(0o4777)
    target = tmp_path / "out"
    unseal(seal(app_dir, provider), target, provider)
    assert stat.S_IMODE((target / "main.py").stat().st_mode) == 0o700
    assert stat.S_IMODE((target / "zero.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "model").stat().st_mode) == 0o700


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_allocator_tuning_applies_on_glibc():
    assert tune_allocator() is True
    assert tune_allocator() is True  # idempotent


def test_seal_result_describes_the_bundle(app_dir, provider):
    out = io.BytesIO()
    result = seal_directory(app_dir, out, key_provider=provider)
    assert (result.app_id, result.app_version) == ("demo-app", "2.1.0")
    assert (result.files, result.directories) == (4, 2)
    assert result.ciphertext_bytes == len(out.getvalue())
    assert result.encryption_context == CONTEXT


def test_progress_reaches_the_total(app_dir, provider):
    calls = []
    seal(app_dir, provider, progress=lambda done, total: calls.append((done, total)))
    done, total = calls[-1]
    assert done == total == sum(p.stat().st_size for p in app_dir.rglob("*") if p.is_file())


def test_existing_empty_target_is_used(app_dir, provider, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    unseal(seal(app_dir, provider), target, provider)
    assert (target / "main.py").exists()


def test_output_file_inside_the_app_directory_is_not_sealed(app_dir, provider, tmp_path):
    bundle_path = app_dir / "demo.sealed"
    with bundle_path.open("wb") as out:
        seal_directory(app_dir, out, key_provider=provider)
    target = tmp_path / "out"
    unseal(bundle_path.read_bytes(), target, provider)
    assert not (target / "demo.sealed").exists()


# --- KMS ----------------------------------------------------------------------------------------


@pytest.fixture
def kms_key(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        kms = boto3.client("kms", region_name="us-east-1")
        yield kms.create_key(Description="enclave key")["KeyMetadata"]["Arn"]


def test_round_trip_with_kms(app_dir, kms_key, tmp_path):
    provider = kms_key_provider(kms_key, botocore_session=botocore.session.Session())
    target = tmp_path / "out"
    unseal(seal(app_dir, provider), target, provider)
    assert tree(target) == tree(app_dir)


def test_kms_bundle_decrypts_with_the_plain_sdk(app_dir, kms_key):
    bundle = seal(app_dir, kms_key_provider(kms_key))
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    plaintext, header = client.decrypt(
        source=bundle, key_provider=StrictAwsKmsMasterKeyProvider(key_ids=[kms_key])
    )
    assert header.algorithm == Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
    assert header.encryption_context == CONTEXT
    with tarfile.open(fileobj=io.BytesIO(plaintext), mode="r:") as tar:
        names = tar.getnames()
        assert names[0] == MANIFEST_NAME
        assert json.loads(tar.extractfile(MANIFEST_NAME).read()) == MANIFEST
        assert tar.extractfile("main.py").read() == (app_dir / "main.py").read_bytes()


def test_kms_bundle_fails_with_another_kms_key(app_dir, kms_key, tmp_path):
    other = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
    bundle = seal(app_dir, kms_key_provider(kms_key))
    target = tmp_path / "out"
    with pytest.raises(UnsealError, match="cannot open the bundle"):
        unseal(bundle, target, kms_key_provider(other))
    assert not target.exists()


def deny(operation: str) -> botocore.session.Session:
    """A botocore session on which KMS answers `operation` with AccessDeniedException."""

    class Denied:
        status_code = 400

    def answer(**kwargs):
        error = {"Code": "AccessDeniedException", "Message": "not allowed by key policy"}
        return Denied(), {"Error": error, "ResponseMetadata": {}}

    session = botocore.session.Session()
    session.register(f"before-call.kms.{operation}", answer)
    return session


def test_kms_denial_is_named_in_the_unseal_error(app_dir, kms_key, tmp_path, capsys):
    bundle = seal(app_dir, kms_key_provider(kms_key))
    denied = kms_key_provider(kms_key, botocore_session=deny("Decrypt"))
    with pytest.raises(UnsealError, match="AccessDeniedException: not allowed by key policy"):
        unseal(bundle, tmp_path / "out", denied)
    assert capsys.readouterr().err == ""  # no SDK traceback on stderr


def test_kms_denial_is_named_in_the_seal_error(app_dir, kms_key, capsys):
    denied = kms_key_provider(kms_key, botocore_session=deny("GenerateDataKey"))
    with pytest.raises(SealError, match="AccessDeniedException"):
        seal(app_dir, denied)
    assert capsys.readouterr().err == ""


# --- wrong key, wrong context -------------------------------------------------------------------


def test_wrong_key_fails_and_leaves_nothing(app_dir, provider, tmp_path):
    target = tmp_path / "out"
    with pytest.raises(UnsealError, match="cannot open the bundle"):
        unseal(seal(app_dir, provider), target, raw_provider(b"\x02" * 32))
    assert not target.exists()


class FailingSource(io.RawIOBase):
    """A bundle whose storage fails after `good` bytes (a disk or network error mid-read)."""

    def __init__(self, data: bytes, good: int) -> None:
        self._data, self._good, self._position = data, good, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._position >= self._good:
            raise OSError(5, "Input/output error")
        end = min(self._good, self._position + (n if n >= 0 else len(self._data)))
        piece = self._data[self._position:end]
        self._position = end
        return piece


def prefetch_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "unseal-prefetch" and t.is_alive()]


def test_read_error_in_the_middle_of_the_bundle_fails_and_leaves_nothing(
    app_dir, provider, tmp_path, small_frames
):
    bundle = seal(app_dir, provider)
    target = tmp_path / "out"
    with pytest.raises(UnsealError, match="cannot read the bundle: .*Input/output error"):
        unseal_bundle(FailingSource(bundle, len(bundle) // 2), target, key_provider=provider)
    assert not target.exists()
    assert prefetch_threads() == []


def test_failed_unseal_stops_its_read_ahead_thread(app_dir, provider, tmp_path):
    with pytest.raises(UnsealError):
        unseal(seal(app_dir, provider), tmp_path / "out", raw_provider(b"\x02" * 32))
    assert prefetch_threads() == []


def test_successful_unseal_stops_its_read_ahead_thread(app_dir, provider, tmp_path):
    unseal(seal(app_dir, provider), tmp_path / "out", provider)
    assert prefetch_threads() == []


@pytest.mark.parametrize(
    "expected", [{"expected_app_id": "other-app"}, {"expected_app_version": "2.1.1"}]
)
def test_unexpected_app_is_rejected_before_any_byte_is_written(
    app_dir, provider, tmp_path, monkeypatch, expected
):
    def must_not_extract(*args, **kwargs):
        raise AssertionError("extraction started before the context was checked")

    monkeypatch.setattr(sealing, "extract_bundle", must_not_extract)
    target = tmp_path / "out"
    with pytest.raises(UnsealError, match="was sealed for app_"):
        unseal(seal(app_dir, provider), target, provider, **expected)
    assert not target.exists()


def test_expected_app_is_accepted(app_dir, provider, tmp_path):
    manifest = unseal(
        seal(app_dir, provider),
        tmp_path / "out",
        provider,
        expected_app_id="demo-app",
        expected_app_version="2.1.0",
    )
    assert manifest.app_version == "2.1.0"


@pytest.mark.parametrize(
    "context",
    [
        {},
        {"app_id": "demo-app", "app_version": "2.1.0"},
        {**CONTEXT, "bundle_format": "2"},
        {**CONTEXT, "extra": "x"},
    ],
    ids=["missing", "no-format", "future-format", "extra-key"],
)
def test_bundle_without_the_expected_context_is_rejected(provider, tmp_path, context):
    bundle = esdk_encrypt(tar_bytes(manifest_member()), provider, context)
    target = tmp_path / "out"
    with pytest.raises(UnsealError, match="encryption context|bundle format"):
        unseal(bundle, target, provider)
    assert not target.exists()


def test_manifest_disagreeing_with_the_context_is_rejected(provider, tmp_path):
    context = bundle_encryption_context("demo-app", "9.9.9")
    bundle = esdk_encrypt(tar_bytes(manifest_member()), provider, context)
    target = tmp_path / "out"
    with pytest.raises(UnsealError, match="sealed as demo-app 9.9.9"):
        unseal(bundle, target, provider)
    assert not target.exists()


def test_other_algorithm_suite_is_rejected(provider, tmp_path):
    bundle = esdk_encrypt(
        tar_bytes(manifest_member()),
        provider,
        CONTEXT,
        algorithm=Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384,
    )
    with pytest.raises(UnsealError, match="algorithm suite"):
        unseal(bundle, tmp_path / "out", provider)


def test_oversized_frame_length_is_rejected(provider, tmp_path):
    bundle = esdk_encrypt(
        tar_bytes(manifest_member()), provider, CONTEXT, frame_length=64 * 1024 * 1024
    )
    with pytest.raises(UnsealError, match="Frame Size"):
        unseal(bundle, tmp_path / "out", provider)


# --- tampering ----------------------------------------------------------------------------------


def frame_offsets(bundle: bytes, frame_length: int = SMALL_FRAME) -> list[int]:
    """Start offsets of the regular frames (sequence number and deterministic IV located)."""
    first = bundle.index((1).to_bytes(4, "big") + (1).to_bytes(12, "big"))
    size = 4 + 12 + frame_length + 16
    offsets = []
    seq = 1
    while bundle[first + (seq - 1) * size : first + (seq - 1) * size + 4] == seq.to_bytes(4, "big"):
        offsets.append(first + (seq - 1) * size)
        seq += 1
    return offsets


@pytest.fixture
def bundle(app_dir, provider, small_frames) -> bytes:
    return seal(app_dir, provider)


def test_test_bundle_has_several_frames(bundle):
    assert len(frame_offsets(bundle)) >= 3


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9], ids=["in-header", "in-body", "late-in-body"])
def test_truncated_bundle_fails_and_leaves_nothing(bundle, provider, tmp_path, cut):
    target = existing_target(tmp_path)
    with pytest.raises(UnsealError):
        unseal(bundle[: int(len(bundle) * cut)], target, provider)
    assert_nothing_left(target)


def test_missing_final_frame_is_detected_only_after_plaintext_was_released(
    bundle, app_dir, provider, tmp_path
):
    offsets = frame_offsets(bundle)
    final_frame = offsets[-1] + (offsets[1] - offsets[0])
    truncated = bundle[:final_frame]
    # The SDK hands out every regular frame before it finds the final one missing ...
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    released = bytearray()
    with pytest.raises(Exception):  # noqa: B017 - whatever the SDK raises, it raises late
        decryptor = client.stream(mode="d", source=io.BytesIO(truncated), key_provider=provider)
        while chunk := decryptor.read(SMALL_FRAME):
            released += chunk
    assert len(released) == len(offsets) * SMALL_FRAME
    assert (app_dir / "model" / "weights.bin").read_bytes()[: 2 * SMALL_FRAME] in released
    # ... so what was staged from them must be removed when the stream turns out short.
    target = existing_target(tmp_path)
    with pytest.raises(UnsealError):
        unseal(truncated, target, provider)
    assert_nothing_left(target)


def test_altered_final_frame_fails_after_extraction_and_leaves_nothing(bundle, provider, tmp_path):
    tampered = bytearray(bundle)
    tampered[-1] ^= 0x01  # the final frame's authentication tag
    target = existing_target(tmp_path)
    with pytest.raises(UnsealError, match="corrupt or was altered"):
        unseal(bytes(tampered), target, provider)
    assert_nothing_left(target)


def test_failure_after_the_tar_end_still_leaves_nothing(provider, tmp_path):
    """Every member is complete before the bad frame: only the final check can catch it."""
    plaintext = tar_bytes(manifest_member(), file_member("main.py", b"x")) + bytes(3 * SMALL_FRAME)
    tampered = bytearray(esdk_encrypt(plaintext, provider, CONTEXT))
    tampered[-1] ^= 0x01
    target = existing_target(tmp_path)
    with pytest.raises(UnsealError, match="corrupt or was altered"):
        unseal(bytes(tampered), target, provider)
    assert_nothing_left(target)


def test_reordered_frames_fail_and_leave_nothing(bundle, provider, tmp_path):
    first, second = frame_offsets(bundle)[:2]
    size = second - first
    swapped = (
        bundle[:first]
        + bundle[second : second + size]
        + bundle[first:second]
        + bundle[second + size :]
    )
    target = existing_target(tmp_path)
    with pytest.raises(UnsealError, match="corrupt or was altered"):
        unseal(swapped, target, provider)
    assert_nothing_left(target)


def test_reordered_frames_with_renumbered_sequence_fail(bundle, provider, tmp_path):
    first, second = frame_offsets(bundle)[:2]
    size = second - first
    frame_one = bytearray(bundle[first:second])
    frame_two = bytearray(bundle[second : second + size])
    frame_one[:4], frame_two[:4] = frame_two[:4], frame_one[:4]
    frame_one[4:16], frame_two[4:16] = frame_two[4:16], frame_one[4:16]
    swapped = bundle[:first] + bytes(frame_two) + bytes(frame_one) + bundle[second + size :]
    target = existing_target(tmp_path)
    with pytest.raises(UnsealError, match="corrupt or was altered"):
        unseal(swapped, target, provider)
    assert_nothing_left(target)


@pytest.mark.parametrize("where", ["frame-1", "frame-3", "last-byte-of-body"])
def test_flipped_bit_fails_and_leaves_nothing(bundle, provider, tmp_path, where):
    offsets = frame_offsets(bundle)
    position = {
        "frame-1": offsets[0] + 100,
        "frame-3": offsets[2] + 2000,
        "last-byte-of-body": len(bundle) - 120,
    }[where]
    tampered = bytearray(bundle)
    tampered[position] ^= 0x10
    target = existing_target(tmp_path)
    with pytest.raises(UnsealError):
        unseal(bytes(tampered), target, provider)
    assert_nothing_left(target)


def test_flipped_bit_in_header_fails(bundle, provider, tmp_path):
    tampered = bytearray(bundle)
    tampered[40] ^= 0x01
    with pytest.raises(UnsealError):
        unseal(bytes(tampered), existing_target(tmp_path), provider)
    assert_nothing_left(tmp_path / "out")


def test_trailing_bytes_are_rejected(bundle, provider, tmp_path):
    target = existing_target(tmp_path)
    with pytest.raises(UnsealError, match="after the end"):
        unseal(bundle + b"x", target, provider)
    assert_nothing_left(target)


def test_failure_keeps_an_existing_target_but_empties_it(bundle, provider, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UnsealError):
        unseal(bundle[:-20], target, provider)
    assert target.is_dir() and list(target.iterdir()) == []


def test_non_empty_target_is_refused_and_untouched(bundle, provider, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UnsealError, match="not empty"):
        unseal(bundle, target, provider)
    assert tree(target) == {"keep.txt": b"mine"}


# --- tar members that try to escape -------------------------------------------------------------


def seal_members(provider, *members) -> bytes:
    return esdk_encrypt(tar_bytes(manifest_member(), *members), provider, CONTEXT)


ESCAPES = {
    "absolute": [file_member("/tmp/escaped-abs", b"x")],
    "dotdot": [file_member("../escaped", b"x")],
    "inner-dotdot": [file_member("model/../../escaped", b"x")],
    "dot-component": [file_member("./model/x", b"x")],
    "pax-path-dotdot": [file_member("../" + "x" * 120, b"x")],
    "symlink-out": [
        special_member("link", tarfile.SYMTYPE, "/"),
        file_member("link/tmp/escaped-sym", b"x"),
    ],
    "symlink-in-tree": [special_member("link", tarfile.SYMTYPE, "main.py")],
    "hardlink-out": [special_member("passwd", tarfile.LNKTYPE, "/etc/passwd")],
    "hardlink-in-tree": [
        file_member("a.txt", b"x"),
        special_member("b.txt", tarfile.LNKTYPE, "a.txt"),
    ],
    "char-device": [special_member("null", tarfile.CHRTYPE)],
    "block-device": [special_member("disk", tarfile.BLKTYPE)],
    "fifo": [special_member("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_or_special_member_is_rejected_and_leaves_nothing(provider, tmp_path, case):
    target = tmp_path / "deep" / "out"
    target.mkdir(parents=True)
    with pytest.raises(UnsealError):
        unseal(seal_members(provider, *ESCAPES[case]), target, provider)
    assert_nothing_left(target)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "deep",
        "deep/out",
    ]
    assert not Path("/tmp/escaped-abs").exists()
    assert not Path("/tmp/escaped-sym").exists()


def test_member_error_names_the_member_kind(provider, tmp_path):
    bundle = seal_members(provider, special_member("passwd", tarfile.LNKTYPE, "/etc/passwd"))
    with pytest.raises(UnsealError, match="'passwd' is a hard link"):
        unseal(bundle, existing_target(tmp_path), provider)


def test_manifest_must_be_the_first_member(provider, tmp_path):
    bundle = esdk_encrypt(
        tar_bytes(file_member("main.py", b"x"), manifest_member()), provider, CONTEXT
    )
    with pytest.raises(UnsealError, match="first member must be manifest.json"):
        unseal(bundle, existing_target(tmp_path), provider)
    assert_nothing_left(tmp_path / "out")


def test_invalid_manifest_inside_the_bundle_is_rejected(provider, tmp_path):
    bad = {**MANIFEST, "shell": True}
    bundle = esdk_encrypt(tar_bytes(manifest_member(bad)), provider, CONTEXT)
    with pytest.raises(UnsealError, match="manifest.json is invalid: unknown field"):
        unseal(bundle, existing_target(tmp_path), provider)


def test_duplicate_member_is_rejected(provider, tmp_path):
    bundle = seal_members(provider, file_member("a.txt", b"1"), file_member("a.txt", b"2"))
    with pytest.raises(UnsealError, match="appears twice"):
        unseal(bundle, existing_target(tmp_path), provider)
    assert_nothing_left(tmp_path / "out")


def test_file_under_a_file_is_rejected(provider, tmp_path):
    bundle = seal_members(provider, file_member("a", b"1"), file_member("a/b", b"2"))
    with pytest.raises(UnsealError, match="needs 'a' to be a directory"):
        unseal(bundle, existing_target(tmp_path), provider)


def test_empty_bundle_is_rejected(provider, tmp_path):
    bundle = esdk_encrypt(tar_bytes(), provider, CONTEXT)
    with pytest.raises(UnsealError, match="empty"):
        unseal(bundle, existing_target(tmp_path), provider)


# --- sealing errors -----------------------------------------------------------------------------


def test_sealing_without_a_manifest_fails(tmp_path, provider):
    (tmp_path / "main.py").write_text("x")
    with pytest.raises(ManifestError, match="no manifest"):
        seal(tmp_path, provider)


def test_sealing_with_an_invalid_manifest_fails(tmp_path, provider):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**MANIFEST, "format": 2}))
    with pytest.raises(ManifestError, match="format"):
        seal(tmp_path, provider)


@pytest.mark.parametrize("option", ["app_id", "app_version"])
def test_sealing_label_must_match_the_manifest(app_dir, provider, option):
    with pytest.raises(SealError, match="does not match the manifest"):
        seal(app_dir, provider, **{option: "other"})


def test_sealing_refuses_a_symlink(app_dir, provider):
    (app_dir / "link").symlink_to("/etc/passwd")
    with pytest.raises(SealError, match="link is a symbolic link"):
        seal(app_dir, provider)


def test_sealing_refuses_a_symlinked_directory(app_dir, provider):
    (app_dir / "linkdir").symlink_to(app_dir / "model")
    with pytest.raises(SealError, match="symbolic link"):
        seal(app_dir, provider)


def test_sealing_refuses_a_fifo(app_dir, provider):
    os.mkfifo(app_dir / "pipe")
    with pytest.raises(SealError, match="FIFO"):
        seal(app_dir, provider)


def test_sealing_a_file_is_refused(app_dir, provider):
    with pytest.raises(SealError, match="not a directory"):
        seal(app_dir / "main.py", provider)
