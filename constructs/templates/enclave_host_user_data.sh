#!/bin/bash
# Enclave host bootstrap (Amazon Linux 2023, arm64). Rendered at synth time by
# constructs/enclave_host.py: every double-braced name below is replaced with a value from the
# config, and rendering fails if one is left. Safe to run again: each step overwrites or is a no-op.
set -euo pipefail
exec > >(tee -a /var/log/sealed-enclave-bootstrap.log) 2>&1

REGION='{{region}}'
APP_HOME=/opt/sealed-enclave
VENV="$APP_HOME/venv"

# Nitro Enclaves CLI (nitro-cli, the allocator service, vsock-proxy) and its headers.
dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel python3.11 python3.11-pip
# FUSE 3 for `sealed-client sync`: libfuse3 (fuse3-libs), which the client's mfusepy loads, and
# fusermount3 (fuse3), setuid, so ec2-user can mount and unmount without root.
dnf install -y fuse3 fuse3-libs

# Memory and CPUs the allocator reserves for enclaves at boot. Whole cores only, and the parent
# keeps the rest; the config check enforces both before this file is ever rendered.
install -d -m 0755 /etc/nitro_enclaves
cat > /etc/nitro_enclaves/allocator.yaml <<'ALLOCATOR'
---
# Written by the enclave host bootstrap; values come from EnclaveMemoryMiB and EnclaveCpuCount.
memory_mib: {{memory_mib}}
cpu_count: {{cpu_count}}
ALLOCATOR
systemctl enable --now nitro-enclaves-allocator.service

# The enclave's only way out is vsock-proxy, and this allow list is its only destination: this
# region's KMS endpoint on 443. The package's default list names every region's endpoint.
cat > /etc/nitro_enclaves/vsock-proxy.yaml <<'ALLOWLIST'
allowlist:
- {address: {{kms_endpoint}}, port: 443}
ALLOWLIST

# Only members of `ne` may talk to /dev/nitro_enclaves. Session Manager (the only way in) logs
# people in as ssm-user, which its agent creates at the first session, after this script ran:
# create it now, as the agent would (home directory, bash), so that it joins `ne` too. The
# agent keeps an existing ssm-user as it is.
usermod -aG ne ec2-user
getent passwd ssm-user >/dev/null || useradd --create-home --shell /bin/bash ssm-user
usermod -aG ne ssm-user

# Host settings for the client, at a fixed path so it never depends on the working directory.
install -d -m 0755 /etc/sealed-enclave
cat > /etc/sealed-enclave/host.json <<'HOSTJSON'
{{host_json}}
HOSTJSON
chmod 0644 /etc/sealed-enclave/host.json

# The project's client package: its wheel (this stack's asset) and its dependencies, every file
# checked against a hash fixed at synth time (no unhashed install, no path tweaks).
install -d -m 0755 "$APP_HOME" "$APP_HOME/dist"
aws s3 cp --region "$REGION" '{{client_wheel_url}}' "$APP_HOME/dist/{{client_wheel_file}}"
aws s3 cp --region "$REGION" '{{host_requirements_url}}' "$APP_HOME/dist/requirements-host.txt"
cat > /opt/sealed-enclave/dist/requirements-client.txt <<'CLIENT'
sealed-enclave @ file:///opt/sealed-enclave/dist/{{client_wheel_file}} --hash=sha256:{{client_wheel_hash}}
CLIENT
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
  --only-binary :all: -r "$APP_HOME/dist/requirements-host.txt" \
  -r "$APP_HOME/dist/requirements-client.txt"

cat > /usr/local/bin/sealed-client <<'WRAPPER'
#!/bin/sh
# The Enclave User's entry point: `sealed-client proxy -s kms`, `sealed-client sync -d DIR`, ...
# (the installed package's console script; /etc/sealed-enclave/host.json is its default).
exec /opt/sealed-enclave/venv/bin/sealed-client "$@"
WRAPPER
chmod 0755 /usr/local/bin/sealed-client

# The fleet agent (`sealed-client agent`): takes jobs from the queue and runs them in the
# enclave. SIGTERM (stop, shutdown, a scale-in) lets it finish or release its current job.
install -d -m 0755 /etc/systemd/system
cat > /etc/systemd/system/sealed-enclave-agent.service <<'AGENT'
[Unit]
Description=Sealed enclave fleet agent (job queue to enclave)
After=network-online.target nitro-enclaves-allocator.service
Wants=network-online.target

[Service]
User=ec2-user
Group=ne
ExecStart=/opt/sealed-enclave/venv/bin/sealed-client agent --queue-url '{{job_queue_url}}' --bucket '{{bucket}}' --region '{{region}}'
Restart=always
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=120
NoNewPrivileges=true

[Install]
WantedBy=multi-user.target
AGENT
systemctl daemon-reload
if [ -n '{{job_queue_url}}' ]; then
  systemctl enable --now sealed-enclave-agent.service
fi

echo "enclave host bootstrap complete"
