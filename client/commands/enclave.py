"""`enclave start | describe | terminate`: the enclave's life cycle through nitro-cli.

`start` checks what nitro-cli would refuse (memory below 4x the EIF size, more memory or CPUs
than the allocator reserved) before calling it, so the user gets one clear line instead of a
nitro-cli error code; an `s3://` EIF is downloaded first, with its measurements JSON if present.
On the enclave host, `--eif`, `--cpu-count` and `--memory` default to the host settings
(`client.hostconfig`): the pipeline's image in the sharing bucket and the size HostStack reserved.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import aws, hoststate
from client.errors import AwsError, ClientError, NotFoundError, UsageError
from client.hostconfig import HostConfig, config_path, load_host_config
from client.output import emit
from client.target import NITRO_CLI, describe_enclaves, running_enclaves

ALLOCATOR_CONFIG = Path("/etc/nitro_enclaves/allocator.yaml")
MEMORY_FACTOR = 4  # nitro-cli needs enclave memory >= 4x the EIF size
MIB = 1024 * 1024


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("enclave", parents=parents,
                                   help="start, describe or terminate the enclave")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    start = actions.add_parser("start", parents=parents, help="start an enclave from an EIF",
                               description="Start an enclave from a local EIF or one in S3.")
    start.add_argument("--eif", metavar="PATH|s3://BUCKET/KEY",
                       help="the enclave image file (default on the enclave host: the "
                            "pipeline's s3://<bucket>/<enclave_image_prefix><app_id>.eif)")
    start.add_argument("--cpu-count", type=int, metavar="N",
                       help="vCPUs (default: the host settings' enclave_cpu_count, else all "
                            "the allocator reserved)")
    start.add_argument("--memory", type=int, metavar="MIB",
                       help="memory in MiB (default: the host settings' enclave_memory_mib, "
                            "else all the allocator reserved)")
    start.add_argument("--debug-mode", action="store_true",
                       help="console access; zeroes every PCR, so KMS and `attest` will refuse it")
    start.add_argument("--enclave-cid", type=int, metavar="CID", help="request this CID")
    start.add_argument("--allocator-config", type=Path, default=ALLOCATOR_CONFIG,
                       help=f"allocator settings (default {ALLOCATOR_CONFIG})")
    start.add_argument("--download-dir", type=Path, metavar="DIR",
                       help="where an s3:// EIF is saved (default: the client's state dir)")
    start.set_defaults(func=start_command)

    describe = actions.add_parser("describe", parents=parents, help="list running enclaves")
    describe.set_defaults(func=describe_command)

    terminate = actions.add_parser("terminate", parents=parents, help="terminate an enclave")
    terminate.add_argument("--enclave-id", metavar="ID",
                           help="which enclave (default: the one running)")
    terminate.add_argument("--all", action="store_true", help="terminate every enclave")
    terminate.set_defaults(func=terminate_command)


@dataclass(frozen=True)
class Allocator:
    memory_mib: int
    cpu_count: int


def read_allocator(path: Path) -> Allocator:
    """`memory_mib` and `cpu_count` (or the size of `cpu_pool`) from allocator.yaml."""
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise NotFoundError(f"allocator config {path} does not exist; install "
                            "aws-nitro-enclaves-cli and set memory_mib/cpu_count in it") from exc
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([a-z_]+)\s*:\s*['\"]?([^'\"#]*?)['\"]?\s*(#.*)?$", line)
        if match:
            values[match.group(1)] = match.group(2).strip()
    try:
        memory = int(values["memory_mib"])
        if values.get("cpu_count"):
            cpus = int(values["cpu_count"])
        else:
            cpus = _pool_size(values["cpu_pool"])
    except (KeyError, ValueError) as exc:
        raise UsageError(f"{path} needs `memory_mib: <MiB>` and `cpu_count: <N>` (or "
                         f"`cpu_pool`); fix it and restart nitro-enclaves-allocator") from exc
    return Allocator(memory, cpus)


def _pool_size(pool: str) -> int:
    count = 0
    for part in pool.split(","):
        first, _, last = part.strip().partition("-")
        count += int(last) - int(first) + 1 if last else 1
    return count


def minimum_memory_mib(eif_size: int) -> int:
    return math.ceil(MEMORY_FACTOR * eif_size / MIB)


def check_resources(eif_size: int, memory: int, cpus: int, allocator: Allocator) -> None:
    need = minimum_memory_mib(eif_size)
    if memory < need:
        raise UsageError(f"--memory {memory} MiB is less than {MEMORY_FACTOR}x the EIF size "
                         f"({eif_size / MIB:.1f} MiB); pass --memory {need} or more")
    if memory > allocator.memory_mib:
        raise UsageError(f"--memory {memory} MiB exceeds the {allocator.memory_mib} MiB the "
                         "allocator reserved; raise memory_mib in allocator.yaml and restart "
                         "nitro-enclaves-allocator, or ask for less")
    if cpus < 1:
        raise UsageError(f"--cpu-count {cpus} must be at least 1")
    if cpus > allocator.cpu_count:
        raise UsageError(f"--cpu-count {cpus} exceeds the {allocator.cpu_count} CPUs the "
                         "allocator reserved; raise cpu_count in allocator.yaml or ask for fewer")


def parse_s3_url(url: str) -> tuple[str, str]:
    rest = url[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise UsageError(f"{url} is not s3://BUCKET/KEY")
    return bucket, key


def download_eif(url: str, directory: Path, region: str | None) -> tuple[Path, Path | None]:
    """Download the EIF and, when present, its measurements JSON (same key, .json suffix)."""
    import boto3
    from botocore.exceptions import BotoCoreError
    from botocore.exceptions import ClientError as BotoClientError

    bucket, key = parse_s3_url(url)
    directory.mkdir(parents=True, exist_ok=True)
    creds = aws.get_credentials()
    s3 = boto3.client("s3", region_name=aws.get_region(region),
                      aws_access_key_id=creds.access_key_id,
                      aws_secret_access_key=creds.secret_access_key,
                      aws_session_token=creds.session_token)
    eif = directory / Path(key).name
    try:
        s3.download_file(bucket, key, str(eif))
    except BotoClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise NotFoundError(f"{url} does not exist; check the bucket name and the image "
                                "prefix (HostStack output BucketName)") from exc
        raise AwsError(f"downloading {url} failed ({code or exc}); the host role needs "
                       "s3:GetObject on it and kms:Decrypt on the bucket key") from exc
    except BotoCoreError as exc:
        raise AwsError(f"downloading {url} failed: {exc}") from exc
    measurements = None
    json_key = (key[:-4] if key.endswith(".eif") else key) + ".json"
    try:
        target = eif.with_suffix(".json")
        s3.download_file(bucket, json_key, str(target))
        measurements = target
    except (BotoClientError, BotoCoreError):
        print(f"note: no measurements at s3://{bucket}/{json_key}; `attest` will need "
              "--expect-pcr0", file=sys.stderr)
    return eif, measurements


def nitro_cli(*arguments: str) -> Any:
    binary = shutil.which(NITRO_CLI)
    if binary is None:
        raise NotFoundError("nitro-cli is not installed; install aws-nitro-enclaves-cli on the "
                            "enclave host (or use `python -m client simulate up` locally)")
    done = subprocess.run([binary, *arguments], capture_output=True, text=True, check=False,
                          timeout=600)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise ClientError(f"nitro-cli {arguments[0]} failed (exit {done.returncode}): "
                          f"{lines[-1] if lines else 'no message'}; see "
                          "/var/log/nitro_enclaves/ for details")
    try:
        return json.loads(done.stdout) if done.stdout.strip() else {}
    except ValueError:
        # run-enclave prints a line of progress before its JSON: take the JSON object.
        start = done.stdout.find("{")
        try:
            return json.loads(done.stdout[start:])
        except ValueError as exc:
            raise ClientError(f"nitro-cli {arguments[0]} printed no JSON") from exc


def image_location(explicit: str | None, host: HostConfig | None) -> str:
    """`--eif`, else where the pipeline uploads this host's application image."""
    if explicit:
        return explicit
    if host is None:
        raise UsageError(f"no --eif given and no host settings at {config_path()[0]} to find "
                         "the pipeline's image; pass --eif PATH or --eif s3://BUCKET/KEY")
    return host.enclave_image_url


def start_command(args: argparse.Namespace) -> int:
    allocator = read_allocator(args.allocator_config)
    host = load_host_config()
    location = image_location(args.eif, host)
    measurements: Path | None
    if location.startswith("s3://"):
        eif, measurements = download_eif(location, args.download_dir or
                                         hoststate.state_dir() / "eif", args.region)
    else:
        eif = Path(location).resolve()
        if not eif.is_file():
            raise NotFoundError(f"EIF {eif} does not exist; build it or give s3://BUCKET/KEY")
        measurements = next((p for p in (eif.with_suffix(".json"),
                                         eif.parent / "measurements.json") if p.is_file()), None)
    size = eif.stat().st_size
    memory = _first(args.memory, host.enclave_memory_mib if host else None, allocator.memory_mib)
    cpus = _first(args.cpu_count, host.enclave_cpu_count if host else None, allocator.cpu_count)
    check_resources(size, memory, cpus, allocator)
    command = ["run-enclave", "--eif-path", str(eif), "--cpu-count", str(cpus),
               "--memory", str(memory)]
    if args.enclave_cid is not None:
        command += ["--enclave-cid", str(args.enclave_cid)]
    if args.debug_mode:
        command.append("--debug-mode")
        print("warning: debug mode zeroes every PCR; KMS will not release the key and `attest` "
              "fails", file=sys.stderr)
    started = nitro_cli(*command)
    record = {"eif": str(eif), "enclave": started, "debug_mode": args.debug_mode,
              "measurements": json.loads(measurements.read_text()) if measurements else None}
    hoststate.write_json("enclave.json", record)
    emit(args, started, f"enclave {started.get('EnclaveID')} started: cid "
                        f"{started.get('EnclaveCID')}, {cpus} CPUs, {memory} MiB")
    return 0


def _first(*values: int | None) -> int:
    return next(value for value in values if value is not None)


def describe_command(args: argparse.Namespace) -> int:
    described = describe_enclaves()
    if described is None:
        raise NotFoundError("nitro-cli is not installed; this is not an enclave host")
    lines = [f"{e.get('EnclaveID')}  {e.get('State')}  cid {e.get('EnclaveCID')}  "
             f"{e.get('NumberOfCPUs')} CPUs  {e.get('MemoryMiB')} MiB  {e.get('Flags', '')}"
             for e in described] or ["no enclaves"]
    emit(args, described, "\n".join(lines))
    return 0


def terminate_command(args: argparse.Namespace) -> int:
    if args.all:
        result = nitro_cli("terminate-enclave", "--all")
        emit(args, result, "all enclaves terminated")
        return 0
    enclave_id = args.enclave_id
    if enclave_id is None:
        described = describe_enclaves()
        if described is None:
            raise NotFoundError("nitro-cli is not installed; this is not an enclave host")
        running = running_enclaves(described)
        if not running:
            raise NotFoundError("no enclave is running; nothing to terminate")
        if len(running) > 1:
            ids = ", ".join(str(e.get("EnclaveID")) for e in running)
            raise UsageError(f"{len(running)} enclaves are running ({ids}); pick one with "
                             "--enclave-id or use --all")
        enclave_id = str(running[0]["EnclaveID"])
    result = nitro_cli("terminate-enclave", "--enclave-id", enclave_id)
    emit(args, result, f"enclave {enclave_id} terminated")
    return 0
