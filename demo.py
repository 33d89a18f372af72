#!/usr/bin/env python3
"""Play the whole runbook on this machine, in local simulation (`make demo`).

Each step runs the same command a person would run (the client, the encryptor, the pipeline's
allow-list tool) against the local simulation: a KMS endpoint that evaluates the key policy the
ThirdPartyStack synthesizes, a simulated NSM, and the real enclave runtime on a Unix socket.
The script prints what it does and exits non-zero as soon as a step fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import boto3

from client import simstate

PROJECT_ROOT = Path(__file__).resolve().parent
TEMPLATE = PROJECT_ROOT / "cdk.out" / "ThirdPartyStack.template.json"
APP_DIR = PROJECT_ROOT / "src" / "sample-inference"
DATASET = PROJECT_ROOT / "samples" / "host-data" / "patients.csv"


class DemoFailed(Exception):
    pass


def choose_mode(requested: str, jail_unavailable: str | None) -> tuple[str, str]:
    """(mode, why): the emulated enclave ("jail") where this machine can run it, else "plain"."""
    if requested == "plain":
        return "plain", "plain mode was asked for"
    if jail_unavailable is None:
        return "jail", "the image's own command in an emulated enclave (docs/emulation.md)"
    if requested == "jail":
        raise DemoFailed(f"jail mode was asked for, but {jail_unavailable}")
    return "plain", f"the runtime as a plain process: {jail_unavailable}"


class Demo:
    def __init__(self, work: Path, template: Path = TEMPLATE, mode: str = "plain") -> None:
        self.work = work
        # The demo's own simulation, so a simulation the user started is neither used nor stopped.
        self.sim_dir = work / "sim"
        self.template = template
        self.mode = mode
        self.step_number = 0
        self.context = json.loads((PROJECT_ROOT / "cdk.json").read_text())["context"]

    # -- output -----------------------------------------------------------------------------

    def step(self, title: str) -> None:
        self.step_number += 1
        print(f"\n=== {self.step_number}. {title}", flush=True)

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
            expect_failure: bool = False, quiet: bool = False
            ) -> subprocess.CompletedProcess[str]:
        shown = " ".join(shlex.quote(a) for a in argv)
        print(f"$ {shown}", flush=True)
        result = subprocess.run(list(argv), cwd=PROJECT_ROOT, env=env or self.env(), text=True,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL if quiet else subprocess.STDOUT,
                                timeout=600, check=False)
        if not quiet:
            for line in result.stdout.splitlines():
                print(f"  {line}")
        if expect_failure and result.returncode == 0:
            raise DemoFailed(f"`{shown}` succeeded but must be refused")
        if not expect_failure and result.returncode != 0:
            raise DemoFailed(f"`{shown}` failed with exit status {result.returncode}")
        return result

    # -- environments -----------------------------------------------------------------------

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["PYTHONPATH"] = str(PROJECT_ROOT)
        env[simstate.ENV_VAR] = str(self.sim_dir)
        env.update(extra or {})
        return env

    def principal_env(self, state: dict, who: str) -> dict[str, str]:
        """The standard AWS environment of a simulated principal, pointed at the local KMS."""
        principal = state["principals"][who]
        return self.env({
            "AWS_ACCESS_KEY_ID": principal["access_key_id"],
            "AWS_SECRET_ACCESS_KEY": principal["secret_access_key"],
            "AWS_SESSION_TOKEN": principal["session_token"],
            "AWS_DEFAULT_REGION": state["region"],
            "AWS_ENDPOINT_URL_KMS": state["kms"]["endpoint"],
        })

    # -- the runbook --------------------------------------------------------------------------

    def play(self) -> None:
        python = sys.executable
        client = [python, "-m", "client"]

        self.step("Synthesized stacks (make synth): read the enclave key policy ThirdPartyStack "
                  "defines")
        if not self.template.exists():
            raise DemoFailed(f"{self.template} is missing: run `make synth` (make demo does it "
                             "first)")
        print(f"  {self.template}")

        self.step(f"Start the local simulation (KMS endpoint, NSM, enclave runtime) in "
                  f"{self.mode} mode; as the Third Party's image build it creates or reuses the "
                  "enclave key, pins it in the image policy and allows the image's PCR0")
        print(f"  simulation state: {self.sim_dir} (the demo's own; a simulation of yours in "
              f"{simstate.PROJECT_ROOT / '.sim'} is left alone)")
        previous = simstate.load_state(self.sim_dir)
        if previous and simstate.runtime_running(previous):
            print("  an earlier demo's simulation is still running: stopping it first")
            self.run([*client, "simulate", "down"])
        self.run([*client, "simulate", "up", "--template", str(self.template),
                  *(["--jail"] if self.mode == "jail" else [])])
        state = simstate.load_state(self.sim_dir)
        if state is None:
            raise DemoFailed("simulate up recorded no state")
        third_party = self.principal_env(state, "third_party")
        host = self.principal_env(state, "host")
        key_arn = state["enclave_key"]["arn"]

        self.step("Third Party pipeline (nitro-image-builder): allow the enclave image's PCR0 "
                  "with the pipeline's tool (idempotent)")
        measurements = self.work / "measurements.json"
        measurements.write_text(json.dumps({"Measurements": {
            "HashAlgorithm": "Sha384 { ... }", **state["measurements"]}}, indent=2))
        self.run([python, "-m", "pipeline.allowlist", "add", "--key-id", key_arn,
                  "--measurements", str(measurements), "--keep",
                  str(self.context["MeasurementsToKeep"])], env=third_party)

        self.step("Third Party pipeline (application-encryptor): seal src/sample-inference")
        bundle = self.work / "sample-inference.sealed"
        self.run([python, "envelope_encryptor.py", "encrypt", "-d", str(APP_DIR), "-k",
                  self.context["EncryptionKeyAlias"], "-o", str(bundle)], env=third_party)

        self.step("Enclave User: verify the enclave's attestation against the allowed PCR0")
        self.run([*client, "attest", "--simulation", "--measurements", str(measurements)],
                 env=host)

        self.step("Enclave User: push the sealed application and the dataset into the inbox")
        self.run([*client, "push", str(bundle), bundle.name], env=host)
        self.run([*client, "push", str(DATASET), DATASET.name], env=host)

        self.step("Enclave User: run the sealed application's `predict` entrypoint")
        started = self.run([*client, "--json", "run", "-f", bundle.name, "-s", "predict", "--",
                            DATASET.name, "predictions.csv"], env=host, quiet=True)
        run_id = json.loads(started.stdout)["id"]
        print(f"  run {run_id} succeeded")

        self.step("Enclave User: pull the result from the outbox")
        result = self.work / "predictions.csv"
        self.run([*client, "pull", "predictions.csv", str(result)], env=host)
        with result.open(newline="") as handle:
            rows = list(csv.reader(handle))
        print(f"  {result}: {len(rows) - 1} predictions; first rows:")
        for row in rows[:6]:
            print("    " + ",".join(row))

        self.step("Enclave User: the run's receipt, signed by the enclave, checked against the "
                  "files on this side")
        receipt = self.work / "receipt.json"
        self.run([*client, "receipt", run_id, "-o", str(receipt)], env=host)
        self.run([*client, "verify-receipt", str(receipt), "--expect-pcr",
                  f"0={state['measurements']['PCR0']}", "--root", state["dev_root"],
                  "--input", f"{DATASET.name}={DATASET}", "--output",
                  f"predictions.csv={result}"], env=host)

        self.step("Enclave User: start the sample's `serve` entrypoint as a service: unsealed "
                  "once, the model answers many requests")
        started = self.run([*client, "service", "start", "-f", bundle.name, "-s", "serve"],
                           env=host, quiet=True)
        service_id = started.stdout.strip()
        print(f"  service {service_id} ready")
        with DATASET.open(newline="") as handle:
            patients = [{k: (v if k == "patient_id" else float(v)) for k, v in row.items()}
                        for _, row in zip(range(3), csv.DictReader(handle), strict=False)]
        for patient in patients[:2]:
            self.run([*client, "service", "call", service_id, "--path", "/predict", "--json",
                      json.dumps(patient)], env=host)
        self.run([*client, "service", "call", service_id, "--path", "/predict", "--json",
                  json.dumps({"patients": patients, "threshold": 0.3})], env=host)
        self.run([*client, "service", "status", service_id], env=host)
        self.run([*client, "service", "stop", service_id], env=host)

        self.step("Hostile host: a bundle sealed under a key of the host's own is refused by the "
                  "image before any KMS request")
        own_key = self.host_owned_key(state)
        hostile = self.work / "host-made.sealed"
        self.run([python, "envelope_encryptor.py", "encrypt", "-d", str(APP_DIR), "-k", own_key,
                  "-o", str(hostile)], env=host)
        self.run([*client, "push", str(hostile), hostile.name], env=host)
        refused = self.run([*client, "run", "-f", hostile.name, "-s", "predict", "--",
                            DATASET.name, "stolen.csv"], env=host, expect_failure=True)
        if "refused" not in refused.stdout:
            raise DemoFailed("the host's own bundle failed, but not by the image's refusal")

        self.step("Host without an enclave: decrypting the bundle directly is denied by KMS")
        refused = self.run([python, "envelope_encryptor.py", "decrypt", "-i", str(bundle),
                            "-o", str(self.work / "stolen"), "-k", key_arn], env=host,
                           expect_failure=True)
        if "denied" not in refused.stdout.lower():
            raise DemoFailed("the direct decryption failed, but not with an access denial")
        if (self.work / "stolen").exists() and any((self.work / "stolen").iterdir()):
            raise DemoFailed("the refused decryption left files behind")

        self.step("Enclave User: stop the simulation")
        self.run([*client, "simulate", "down"])

    def host_owned_key(self, state: dict) -> str:
        """A key the host role controls entirely, in the local KMS: the attacker's own."""
        host = state["principals"]["host"]
        kms = boto3.client("kms", region_name=state["region"],
                           endpoint_url=state["kms"]["endpoint"],
                           aws_access_key_id=host["access_key_id"],
                           aws_secret_access_key=host["secret_access_key"],
                           aws_session_token=host["session_token"])
        policy = {"Version": "2012-10-17", "Statement": [{
            "Sid": "HostOwnsIt", "Effect": "Allow", "Principal": {"AWS": host["arn"]},
            "Action": "kms:*", "Resource": "*"}]}
        arn: str = kms.create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
        print(f"  host-made key {arn}")
        return arn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=PROJECT_ROOT / ".sim" / "demo",
                        help="where the demo writes the sealed bundle and results")
    parser.add_argument("--template", type=Path, default=TEMPLATE,
                        help="the synthesized ThirdPartyStack template (default: cdk.out's)")
    parser.add_argument("--mode", choices=("auto", "jail", "plain"), default="auto",
                        help="jail: the emulated enclave (root and unshare); plain: the runtime "
                             "as a process; auto (default): jail where the machine allows it")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from client.sim.jail import unavailable_reason

    try:
        mode, why = choose_mode(args.mode, unavailable_reason() if args.mode != "plain" else None)
    except DemoFailed as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"mode: {mode} ({why})", flush=True)
    for leftover in ("measurements.json", "sample-inference.sealed", "predictions.csv",
                     "receipt.json", "host-made.sealed"):
        (args.work / leftover).unlink(missing_ok=True)
    started = time.monotonic()
    demo = Demo(args.work, args.template, mode)
    try:
        demo.play()
    except (DemoFailed, Exception) as exc:  # every failure ends the demo with one clear line
        print(f"\ndemo FAILED at step {demo.step_number}: {exc}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "client", "simulate", "down"], cwd=PROJECT_ROOT,
                       env=demo.env(), capture_output=True, check=False)
        return 1
    where = ("the emulated enclave (the image's own command in Linux namespaces)"
             if mode == "jail" else "the simulated enclave (plain mode)")
    print(f"\ndemo completed in {time.monotonic() - started:.1f}s in {mode} mode: the sealed "
          f"application ran on the host's data inside {where}, attested; the host alone could "
          "not decrypt it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
