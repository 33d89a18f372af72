"""NSM client: ioctl struct packing, the ioctl path against a fake kernel, the simulated NSM."""

from __future__ import annotations

import ctypes
import datetime as dt
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from runtime_harness import TEST_POLICY_BYTES as POLICY

from client.attestation import verify_attestation
from client.errors import VerificationError
from client.sim import pki as sim_pki
from client.sim.measure import extend, image_sha384, simulated_pcrs
from client.sim.nsm import build_attestation_document, serve_nsm
from enclave import nsm as nsm_module
from enclave.nsm import (
    NSM_IOCTL_RAW,
    NSM_RAW_SIZE,
    NSM_RESPONSE_MAX,
    NsmClient,
    NsmError,
    ioctl_request_code,
    pack_nsm_raw,
    unpack_nsm_raw,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# ---- the ioctl ABI ---------------------------------------------------------------------------


def test_ioctl_number_is_iowr_0x0a_0_of_struct_nsm_raw() -> None:
    assert NSM_RAW_SIZE == 32
    assert ioctl_request_code() == NSM_IOCTL_RAW == 0xC0200A00


def test_nsm_raw_packs_two_iovecs_of_u64_addr_and_len() -> None:
    raw = pack_nsm_raw(0x1122334455667788, 0x10, 0xAABBCCDD00112233, 0x3000)
    assert len(raw) == 32
    assert raw[0:8] == (0x1122334455667788).to_bytes(8, "little")
    assert raw[8:16] == (0x10).to_bytes(8, "little")
    assert raw[16:24] == (0xAABBCCDD00112233).to_bytes(8, "little")
    assert raw[24:32] == (0x3000).to_bytes(8, "little")
    assert unpack_nsm_raw(raw) == (0x1122334455667788, 0x10, 0xAABBCCDD00112233, 0x3000)


class FakeNsmKernel:
    """Plays the kernel's side of NSM_IOCTL_RAW on the caller's real memory buffers."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.requests: list[bytes] = []

    def ioctl(self, fd: int, request: int, raw: bytearray, mutate: bool) -> int:
        assert request == NSM_IOCTL_RAW and mutate
        req_addr, req_len, resp_addr, resp_len = unpack_nsm_raw(bytes(raw))
        assert resp_len == NSM_RESPONSE_MAX
        self.requests.append(ctypes.string_at(req_addr, req_len))
        ctypes.memmove(resp_addr, self.reply, len(self.reply))
        raw[:] = pack_nsm_raw(req_addr, req_len, resp_addr, len(self.reply))
        return 0


@pytest.fixture
def fake_device(tmp_path: Path) -> Path:
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    return device


def test_ioctl_path_sends_cbor_and_reads_the_length_the_kernel_wrote(
        fake_device: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeNsmKernel(cbor2.dumps({"GetRandom": {"random": b"\x07" * 32}}))
    monkeypatch.setattr(nsm_module.fcntl, "ioctl", kernel.ioctl)
    assert NsmClient(fake_device).get_random(20) == b"\x07" * 20
    assert cbor2.loads(kernel.requests[0]) == "GetRandom"  # a unit request is a bare string


def test_ioctl_error_reply_becomes_nsm_error_with_its_code(
        fake_device: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeNsmKernel(cbor2.dumps({"Error": "InvalidArgument"}))
    monkeypatch.setattr(nsm_module.fcntl, "ioctl", kernel.ioctl)
    with pytest.raises(NsmError) as caught:
        NsmClient(fake_device).attestation(nonce=b"n")
    assert caught.value.code == "InvalidArgument"


def test_ioctl_os_error_becomes_nsm_error(fake_device: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*_args):
        raise OSError(25, "Inappropriate ioctl for device")
    monkeypatch.setattr(nsm_module.fcntl, "ioctl", failing)
    with pytest.raises(NsmError, match="ioctl") as caught:
        NsmClient(fake_device).describe()
    assert caught.value.code == "DeviceError"


def test_real_ioctl_reaches_the_kernel_with_the_nsm_request_number() -> None:
    # /dev/null refuses every ioctl with ENOTTY: the request number and the struct went through
    # Python's fcntl.ioctl unchanged (no OverflowError for the high bit) and came back an NsmError
    with pytest.raises(NsmError, match="Inappropriate ioctl") as caught:
        NsmClient("/dev/null").describe()
    assert caught.value.code == "DeviceError"


def test_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NsmError, match="cannot reach the NSM"):
        NsmClient(tmp_path / "absent").describe()


@pytest.mark.parametrize("field, size", [("user_data", 513), ("nonce", 513),
                                         ("public_key", 1025)])
def test_oversized_attestation_field_is_refused_before_the_call(
        field: str, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_call(self, request):
        raise AssertionError("the NSM was called with an oversized field")
    monkeypatch.setattr(NsmClient, "call", must_not_call)
    with pytest.raises(NsmError, match=f"{field} is {size} bytes") as caught:
        NsmClient("/dev/null").attestation(**{field: b"x" * size})
    assert caught.value.code == "InputTooLarge"


def test_request_larger_than_the_device_accepts_is_refused() -> None:
    with pytest.raises(NsmError, match="exceeds 4096"):
        nsm_module.encode_request({"Attestation": {"user_data": b"x" * 5000}})


# ---- the simulated NSM over a real Unix socket ----------------------------------------------


# the PCRs each simulated NSM was started with: computing them again later could differ, as
# the measured tree (enclave/, containers/) may change while the suite runs
STARTED_PCRS: dict[str, dict[int, bytes]] = {}


def start_nsm(tmp_path: Path, *, debug: bool = False) -> Iterator[tuple[NsmClient, Path]]:
    state = tmp_path / "state"
    path = tmp_path / "nsm.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(4)
    stop = threading.Event()
    pcrs = simulated_pcrs(PROJECT_ROOT, policy=POLICY)
    STARTED_PCRS[str(path)] = pcrs
    thread = threading.Thread(target=serve_nsm, args=(sock,),
                              kwargs={"state_dir": state, "pcrs": pcrs, "debug": debug,
                                      "stop": stop}, daemon=True)
    thread.start()
    try:
        yield NsmClient.simulated(path), state
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[tuple[NsmClient, Path]]:
    yield from start_nsm(tmp_path)


@pytest.fixture
def sim_debug(tmp_path: Path) -> Iterator[tuple[NsmClient, Path]]:
    yield from start_nsm(tmp_path, debug=True)


def test_a_socket_given_as_the_production_device_is_not_taken_for_the_simulation(sim) -> None:
    """Only configuration selects the simulation: the device client opens the path as a device,
    which a socket refuses, so no simulated document ever reaches a production caller."""
    client, state = sim
    assert client.describe()  # the simulated NSM answers on this socket
    with pytest.raises(NsmError, match="cannot reach the NSM") as caught:
        NsmClient(client.device).attestation(nonce=b"n")
    assert caught.value.code == "DeviceError"


def test_an_unknown_nsm_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown NSM transport"):
        NsmClient("/dev/nsm", transport="socket")  # type: ignore[arg-type]


def test_runtime_command_line_defaults_to_the_device_transport() -> None:
    from enclave.__main__ import build_parser

    args = build_parser().parse_args(["serve", "--unix", "/s", "--exchange", "/e",
                                      "--private", "/p", "--policy", "/x",
                                      "--nsm-device", "/s/nsm.sock"])
    assert args.nsm_transport == "device"


def test_simulated_document_verifies_with_the_development_root(sim) -> None:
    client, state = sim
    document = client.attestation(nonce=b"N" * 32, user_data=b"u", public_key=b"K" * 300)
    root = sim_pki.load_root_pem(state)
    result = verify_attestation(document, root_pem=root, nonce=b"N" * 32,
                                expected_pcrs={0: STARTED_PCRS[client.device][0]})
    assert (result.user_data, result.public_key) == (b"u", b"K" * 300)
    assert result.debug_mode is False


def test_simulated_document_is_rejected_against_the_aws_root(sim) -> None:
    client, _ = sim
    with pytest.raises(VerificationError, match="not the trusted root"):
        verify_attestation(client.attestation(nonce=b"n"))


def test_simulated_document_has_the_real_layout(sim) -> None:
    client, _ = sim
    protected, unprotected, payload, signature = cbor2.loads(client.attestation())
    assert protected == bytes.fromhex("a1013822") and unprotected == {} and len(signature) == 96
    fields = cbor2.loads(payload)
    assert list(fields) == ["module_id", "digest", "timestamp", "pcrs", "certificate",
                            "cabundle", "public_key", "user_data", "nonce"]
    assert sorted(fields["pcrs"]) == list(range(16))


def test_debug_mode_zeroes_pcrs_and_is_rejected_by_default(sim_debug) -> None:
    client, state = sim_debug
    document = client.attestation(nonce=b"n")
    root = sim_pki.load_root_pem(state)
    with pytest.raises(VerificationError, match="debug mode"):
        verify_attestation(document, root_pem=root)
    result = verify_attestation(document, root_pem=root, allow_debug=True)
    assert set(result.pcrs.values()) == {bytes(48)}


def test_indefinite_length_payload_verifies(tmp_path: Path) -> None:
    pki = sim_pki.load_or_create(tmp_path)
    document = build_attestation_document(pki, pcrs=simulated_pcrs(PROJECT_ROOT, policy=POLICY),
                                          module_id="i-x-enc1", nonce=b"n", indefinite=True)
    assert cbor2.loads(document)[2][0] == 0xBF
    assert verify_attestation(document, root_pem=pki.root_pem, nonce=b"n").module_id == "i-x-enc1"


def test_oversized_field_sent_anyway_gets_the_nsm_error_code(sim) -> None:
    client, _ = sim
    reply = client.call({"Attestation": {"nonce": b"x" * 600}})
    with pytest.raises(NsmError) as caught:
        nsm_module.decode_response(reply, "Attestation")
    assert caught.value.code == "InputTooLarge"


def test_unknown_operation_gets_invalid_operation(sim) -> None:
    client, _ = sim
    with pytest.raises(NsmError) as caught:
        nsm_module.decode_response(client.call({"ExtendPCR": {"index": 16, "data": b""}}),
                                   "ExtendPCR")
    assert caught.value.code == "InvalidOperation"


@pytest.mark.parametrize("request_", [{"GetRandom": {}}, {"DescribeNSM": None}])
def test_argument_less_operation_in_map_form_is_refused_like_the_device(sim, request_) -> None:
    client, _ = sim
    assert cbor2.loads(client.call(request_)) == {"Error": "InvalidOperation"}


def test_describe_and_describe_pcr(sim) -> None:
    client, _ = sim
    description = client.describe()
    assert description["digest"] == "SHA384" and description["module_id"].startswith("i-")
    locked, value = client.describe_pcr(0)
    assert locked and value == STARTED_PCRS[client.device][0]


def test_get_random_collects_across_calls(sim) -> None:
    client, _ = sim
    data = client.get_random(1000)
    assert len(data) == 1000 and len(set(data)) > 100


def test_server_survives_a_garbage_request(sim) -> None:
    client, _ = sim
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(client.device)
        raw.sendall(b"\xff\x00garbage")
        raw.shutdown(socket.SHUT_WR)
        assert cbor2.loads(raw.recv(100)) == {"Error": "InvalidArgument"}
    assert client.describe()["digest"] == "SHA384"


# ---- measurements and the development PKI ---------------------------------------------------


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def test_pcr0_changes_when_one_runtime_byte_changes(tmp_path: Path) -> None:
    write_tree(tmp_path, {"enclave/a.py": b"x = 1\n", "containers/Dockerfile": b"FROM x\n"})
    before = simulated_pcrs(tmp_path, policy=POLICY)
    write_tree(tmp_path, {"enclave/a.py": b"x = 2\n"})
    after = simulated_pcrs(tmp_path, policy=POLICY)
    assert before[0] != after[0] and before[2] != after[2] and before[1] == after[1]


def test_pcr0_ignores_bytecode_caches(tmp_path: Path) -> None:
    write_tree(tmp_path, {"enclave/a.py": b"x = 1\n"})
    before = simulated_pcrs(tmp_path, policy=POLICY)
    write_tree(tmp_path, {"enclave/__pycache__/a.cpython-311.pyc": b"junk"})
    assert simulated_pcrs(tmp_path, policy=POLICY) == before


def test_pcr2_is_the_documented_extend_chain(tmp_path: Path) -> None:
    import hashlib
    write_tree(tmp_path, {"enclave/b.py": b"B", "containers/a": b"A"})

    def record(name: str, content: bytes) -> bytes:
        return hashlib.sha384(name.encode() + b"\0" + hashlib.sha384(content).digest()).digest()
    expected = bytes(48)
    for name, content in (("containers/a", b"A"), ("containers/enclave-policy.json", POLICY),
                          ("enclave/b.py", b"B")):
        expected = extend(expected, record(name, content))
    assert simulated_pcrs(tmp_path, policy=POLICY)[2] == expected


def test_pcr0_commits_to_the_image_policy(tmp_path: Path) -> None:
    """The policy is in the image: pinning another key or app gives another measurement."""
    from dataclasses import replace

    from runtime_harness import TEST_POLICY

    write_tree(tmp_path, {"enclave/a.py": b"x = 1\n"})
    base = simulated_pcrs(tmp_path, policy=POLICY)
    for changed in (replace(TEST_POLICY, app_ids=("test-app",)),
                    replace(TEST_POLICY, minimum_app_version="2.0"),
                    replace(TEST_POLICY, kms_key_arns=(
                        "arn:aws:kms:us-east-1:111111111111:key/another",))):
        assert simulated_pcrs(tmp_path, policy=changed.canonical_bytes())[0] != base[0]


def test_a_policy_file_left_in_the_checkout_is_not_what_is_measured(tmp_path: Path) -> None:
    write_tree(tmp_path, {"enclave/a.py": b"x = 1\n"})
    before = simulated_pcrs(tmp_path, policy=POLICY)
    write_tree(tmp_path, {"containers/enclave-policy.json": b'{"app_ids": ["evil"]}'})
    assert simulated_pcrs(tmp_path, policy=POLICY) == before


def test_image_sha384_is_pcr0_in_lowercase_hex(tmp_path: Path) -> None:
    write_tree(tmp_path, {"enclave/a.py": b"x"})
    assert image_sha384(tmp_path, policy=POLICY) == simulated_pcrs(tmp_path, policy=POLICY)[0].hex()


def test_debug_measurement_is_all_zero(tmp_path: Path) -> None:
    write_tree(tmp_path, {"enclave/a.py": b"x"})
    assert set(simulated_pcrs(tmp_path, policy=POLICY, debug=True).values()) == {bytes(48)}


def test_development_pki_is_created_once_and_reused(tmp_path: Path) -> None:
    first = sim_pki.load_or_create(tmp_path)
    second = sim_pki.load_or_create(tmp_path)
    assert first.root_pem == second.root_pem and first.leaf_der() == second.leaf_der()
    assert (tmp_path / "pki" / "leaf.key").stat().st_mode & 0o077 == 0


def test_development_leaf_is_renewed_before_it_expires(tmp_path: Path) -> None:
    first = sim_pki.load_or_create(tmp_path)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=sim_pki.LEAF_DAYS - 1)
    renewed = sim_pki.load_or_create(tmp_path, now=later)
    assert renewed.root_pem == first.root_pem and renewed.leaf_der() != first.leaf_der()


def test_module_entry_point_serves_on_its_socket(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from tests.sim_support import short_socket_dir

    policy_file = tmp_path / "policy.json"
    policy_file.write_bytes(POLICY)
    with short_socket_dir() as sockets:
        path = sockets / "nsm.sock"
        process = subprocess.Popen(
            [sys.executable, "-m", "client.sim.nsm", "--socket", str(path),
             "--state", str(tmp_path / "state"), "--debug", "--policy", str(policy_file)],
            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            _, value = NsmClient.simulated(path).describe_pcr(0)
            assert value == bytes(48)  # --debug
        finally:
            process.terminate()
            process.wait(timeout=10)
