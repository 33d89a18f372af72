"""Push and pull throughput over the runtime API, against a raw socket copy of the same bytes.

    python bench/transfer_bench.py [--size 1GiB] [--dir DIR] [--repeat N]

Files live in /dev/shm by default: the ratio is meant to isolate the protocol's cost, and on this
machine's ext4 volume the local file system, not the socket, limits a pull (pass --dir /tmp to see).

Everything is file to file over one Unix socket, each side in its own process:

- raw:  a sender process `sendfile`s the file into a Unix socket; a receiver process reads it
        with a 1 MiB buffer into a file. The upper bound for any protocol on this machine.
- push: `python -m client push` (its own process) -> `python -m enclave serve` (its own process),
        which writes into the inbox (temp name, rename when complete).
- pull: `python -m client pull` <- the runtime streaming the same file from the outbox.

Times are measured inside the processes (from connect to the last byte written and the file
closed, on CLOCK_MONOTONIC, which is shared by every process), so interpreter start-up is not
counted for anyone. CPU seconds of both sides are reported too: unlike wall time they hardly
depend on what else the machine runs. Peak RSS: the client's from wait4() (ru_maxrss), the
runtime's from /proc/<pid>/status VmHWM, reset between phases through /proc/<pid>/clear_refs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from benchlib import parse_size, ram_workdir  # noqa: E402  (beside this script)

MIB = 1024 * 1024
TARGET_RATIO = 0.6
STRETCH_RATIO = 0.8
RSS_LIMIT_MIB = 128


def make_file(path: Path, size: int) -> None:
    block = os.urandom(4 * MIB)  # incompressible; repeating a block keeps creation fast
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def run_child(command: list[str]) -> tuple[str, float, float]:
    """Run a child to completion; return its stdout, peak RSS in MiB and CPU seconds (wait4)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=child_env(), cwd=PROJECT_ROOT)
    out = process.stdout.read()
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[:4]}... failed ({process.returncode}): {err.decode()[-500:]}")
    return out.decode(), usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # KiB on Linux


def startup_cpu(code: str) -> float:
    """CPU seconds an interpreter spends starting and importing, to subtract from children."""
    return min(run_child([sys.executable, "-c", code])[2] for _ in range(3))


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- raw baseline ----------------------------------------------------------------------------------


def raw_receiver(socket_path: str, out_path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(1)
    print("ready", flush=True)
    conn, _ = listener.accept()
    buffer = bytearray(MIB)
    view = memoryview(buffer)
    with open(out_path, "wb") as f:
        while True:
            n = conn.recv_into(buffer)
            if not n:
                break
            f.write(view[:n])
    end = time.monotonic()
    conn.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"end": end, "rss_mib": usage.ru_maxrss / 1024,
                      "cpu": usage.ru_utime + usage.ru_stime}), flush=True)


def raw_sender(socket_path: str, in_path: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    start = time.monotonic()
    sock.connect(socket_path)
    with open(in_path, "rb") as f:
        sock.sendfile(f)
    sock.close()
    print(json.dumps({"start": start}), flush=True)


def raw_copy(source: Path, work: Path, startup: float) -> dict[str, float]:
    socket_path = str(work / "raw.sock")
    out_path = work / "raw.out"
    receiver = subprocess.Popen([sys.executable, __file__, "--child", "raw-receiver", socket_path,
                                 str(out_path)], stdout=subprocess.PIPE, env=child_env())
    assert receiver.stdout.readline().strip() == b"ready"
    sent, sender_rss, sender_cpu = run_child([sys.executable, __file__, "--child", "raw-sender",
                                              socket_path, str(source)])
    received = json.loads(receiver.stdout.readline())
    receiver.wait()
    seconds = received["end"] - json.loads(sent)["start"]
    size = out_path.stat().st_size
    out_path.unlink()
    os.unlink(socket_path)
    cpu = max(sender_cpu - startup, 0) + max(received["cpu"] - startup, 0)
    return {"seconds": seconds, "mib_s": size / MIB / seconds, "sender_rss_mib": sender_rss,
            "receiver_rss_mib": received["rss_mib"], "cpu_s": cpu}


# -- runtime -------------------------------------------------------------------------------------


def start_runtime(work: Path) -> tuple[subprocess.Popen, str, Path]:
    from enclave.__main__ import simulation_argv

    socket_path = str(work / "runtime.sock")
    exchange = work / "exchange"
    command = simulation_argv(socket_path=socket_path, exchange=exchange,
                              private=work / "private", nsm_device=work / "no-nsm.sock",
                              kms_endpoint="http://127.0.0.1:9", region="us-east-1",
                              policy=work / "policy.json")
    log = (work / "runtime.log").open("wb")
    runtime = subprocess.Popen(command, stdout=log, stderr=log, env=child_env())
    deadline = time.monotonic() + 30
    while not os.path.exists(socket_path):
        if runtime.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"runtime did not start; see {work / 'runtime.log'}")
        time.sleep(0.05)
    return runtime, socket_path, exchange


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def client_transfer(socket_path: str, *args: str) -> tuple[dict, float, float]:
    out, rss, cpu = run_child([sys.executable, "-m", "client", "--socket", socket_path, "--json",
                               "--timeout", "120", *args, "--no-progress"])
    return json.loads(out), rss, cpu


def best(results: list[dict]) -> dict:
    return min(results, key=lambda r: r["seconds"])


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def filesystem_of(path: Path) -> str:
    """The mount's file system type, for the report (disk and RAM give different pictures)."""
    best_mount, best_type = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best_mount):
                best_mount, best_type = mount, fstype
    except OSError:
        pass
    return best_type


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"),
                        help="bytes to move, e.g. 1GiB (default), 256MiB")
    parser.add_argument("--dir", type=Path, default=ram_workdir(),
                        help="work directory (default: /dev/shm where it exists, so that the "
                             "local disk is not the narrower pipe; the enclave's side is RAM)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode; the best counts")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        {"raw-receiver": raw_receiver, "raw-sender": raw_sender}[args.child[0]](*args.child[1:])
        return 0

    work = Path(tempfile.mkdtemp(prefix="transfer-bench-", dir=args.dir))
    try:
        source = work / "source.bin"
        make_file(source, args.size)
        raw_runs, push_runs, pull_runs = [], [], []
        runtime, socket_path, exchange = start_runtime(work)
        runtime_push_rss = runtime_pull_rss = 0.0
        can_reset = reset_peak(runtime.pid)
        bare_startup = startup_cpu("import json, os, resource, socket, sys, time")
        client_startup = startup_cpu("import client.cli; client.cli.build_parser()")
        try:
            for _ in range(args.repeat):
                os.sync()  # no background writeback of the previous phase in the next one
                raw_runs.append(raw_copy(source, work, bare_startup))

                os.sync()
                reset_peak(runtime.pid)
                before = process_cpu(runtime.pid)
                result, rss, cpu = client_transfer(socket_path, "push", str(source), "bench.bin")
                runtime_push_rss = max(runtime_push_rss, vm_hwm_mib(runtime.pid))
                client_cpu = max(cpu - client_startup, 0)
                runtime_cpu = process_cpu(runtime.pid) - before
                push_runs.append({"seconds": result["seconds"],
                                  "mib_s": args.size / MIB / result["seconds"],
                                  "client_rss_mib": rss, "cpu_s": client_cpu + runtime_cpu,
                                  "client_cpu_s": client_cpu, "runtime_cpu_s": runtime_cpu})
                # Put the uploaded file where the host may read it: the outbox.
                (exchange / "outbox").mkdir(exist_ok=True)
                os.replace(exchange / "inbox" / "bench.bin", exchange / "outbox" / "bench.bin")

                os.sync()
                reset_peak(runtime.pid)
                target = work / "pulled.bin"
                before = process_cpu(runtime.pid)
                result, rss, cpu = client_transfer(socket_path, "pull", "bench.bin", str(target))
                client_cpu = max(cpu - client_startup, 0)
                runtime_cpu = process_cpu(runtime.pid) - before
                runtime_pull_rss = max(runtime_pull_rss, vm_hwm_mib(runtime.pid))
                if target.stat().st_size != args.size:
                    raise SystemExit("pulled file has the wrong size")
                pull_runs.append({"seconds": result["seconds"],
                                  "mib_s": args.size / MIB / result["seconds"],
                                  "client_rss_mib": rss, "cpu_s": client_cpu + runtime_cpu,
                                  "client_cpu_s": client_cpu, "runtime_cpu_s": runtime_cpu})
                target.unlink()
                (exchange / "outbox" / "bench.bin").unlink()
        finally:
            runtime.terminate()
            runtime.wait(timeout=10)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # On a shared machine the load changes between runs: each push and pull is compared with the
    # raw copy of its own round, and the median of those ratios is the figure that counts.
    push_ratios = [p["mib_s"] / r["mib_s"] for p, r in zip(push_runs, raw_runs, strict=True)]
    pull_ratios = [p["mib_s"] / r["mib_s"] for p, r in zip(pull_runs, raw_runs, strict=True)]
    # CPU seconds per byte hardly depend on other load: raw CPU / mode CPU is the efficiency.
    raw_cpu = median([r["cpu_s"] for r in raw_runs])
    push_cpu = median([r["cpu_s"] for r in push_runs])
    pull_cpu = median([r["cpu_s"] for r in pull_runs])
    split = {name: {side: median([r[f"{side}_cpu_s"] for r in runs])
                    for side in ("client", "runtime")}
             for name, runs in (("push", push_runs), ("pull", pull_runs))}
    raw, push, pull = best(raw_runs), best(push_runs), best(pull_runs)
    report = {
        "size_bytes": args.size,
        "raw": {**raw, "cpu_s": raw_cpu},
        "load_average": os.getloadavg(),
        "push": {**push, "ratio": median(push_ratios), "ratios": push_ratios,
                 "cpu_s": push_cpu, "cpu_ratio": raw_cpu / push_cpu, "cpu_split": split["push"],
                 "client_rss_mib": max(r["client_rss_mib"] for r in push_runs),
                 "runtime_rss_mib": runtime_push_rss},
        "pull": {**pull, "ratio": median(pull_ratios), "ratios": pull_ratios,
                 "cpu_s": pull_cpu, "cpu_ratio": raw_cpu / pull_cpu, "cpu_split": split["pull"],
                 "client_rss_mib": max(r["client_rss_mib"] for r in pull_runs),
                 "runtime_rss_mib": runtime_pull_rss},
        "runtime_peak_reset_between_phases": can_reset,
        "targets": {"ratio": TARGET_RATIO, "stretch": STRETCH_RATIO, "rss_mib": RSS_LIMIT_MIB},
    }
    where = args.dir or Path(tempfile.gettempdir())
    print(f"size {args.size / MIB:.0f} MiB, {args.repeat} rounds in {where} "
          f"({filesystem_of(where)}); MiB/s best, x raw = median of per-round ratios; RSS = peak")
    print(f"{'mode':6} {'MiB/s':>9} {'x raw':>7} {'client RSS':>11} {'runtime RSS':>12} "
          f"{'CPU s':>7} {'raw CPU/CPU':>12}")
    print(f"{'raw':6} {raw['mib_s']:9.0f} {1:7.2f} {raw['sender_rss_mib']:9.1f}Mi "
          f"{raw['receiver_rss_mib']:10.1f}Mi {raw_cpu:7.2f} {1:12.2f}")
    ok = True
    for name in ("push", "pull"):
        row = report[name]
        print(f"{name:6} {row['mib_s']:9.0f} {row['ratio']:7.2f} {row['client_rss_mib']:9.1f}Mi "
              f"{row['runtime_rss_mib']:10.1f}Mi {row['cpu_s']:7.2f} {row['cpu_ratio']:12.2f}")
        ok &= row["ratio"] >= TARGET_RATIO and row["client_rss_mib"] <= RSS_LIMIT_MIB \
            and row["runtime_rss_mib"] <= RSS_LIMIT_MIB
    for name in ("push", "pull"):
        print(f"{name} CPU: client {split[name]['client']:.2f}s, runtime "
              f"{split[name]['runtime']:.2f}s")
    print(f"load average during the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} CPUs")
    print(f"target >= {TARGET_RATIO} x raw (stretch {STRETCH_RATIO}), RSS <= {RSS_LIMIT_MIB} MiB "
          f"each: {'met' if ok else 'NOT met'}")
    print(json.dumps(report, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
