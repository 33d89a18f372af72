"""The emulated enclave: every way it differs from a real Nitro Enclave, set here and nowhere else.

`python -m client simulate up --jail` (client/sim/jail.py) starts the image's own command in Linux
namespaces that reproduce what the enclave init and linuxkit leave behind (docs/emulation.md).
Only what a development machine cannot provide is replaced, and each replacement is one entry of
`DIFFERENCES` below plus, where code needs it, one constant or pure function beside it. The
runtime is told of exactly two of them on its command line: with `--emulate-vsock-dir DIR` every
AF_VSOCK endpoint (cid, port) it listens on or connects to becomes the Unix socket
`vsock_socket_path(DIR, cid, port)`, and with `--nsm-transport simulation` it reaches /dev/nsm as
the simulated NSM's socket. Without those options nothing here is used.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

# -- socket family: AF_VSOCK -> Unix sockets, one per (cid, port) --------------------------------
EMULATED_ENCLAVE_CID = 16  # what nitro-cli gives the first enclave when none is asked for
PARENT_CID = 3  # the parent instance, as seen from an enclave (vsock-proxy listens there)
VSOCK_DIR_IN_JAIL = "/vsock"  # where the jail mounts the host's directory of vsock sockets


def vsock_socket_name(cid: int, port: int) -> str:
    if not 0 <= cid < 2**32 or not 0 < port < 2**32:
        raise ValueError(f"not a vsock address: cid {cid}, port {port}")
    return f"cid{cid}-port{port}.sock"


def vsock_socket_path(directory: str, cid: int, port: int) -> str:
    """The Unix socket standing for vsock address (cid, port)."""
    return posixpath.join(directory, vsock_socket_name(cid, port))


# -- interpreter: the image's absolute path -> an interpreter of the same version here -----------
# The image (Amazon Linux 2023) has Python 3.11 at /usr/bin/python3.11 and its own python3 (3.9,
# dnf's) at /usr/bin/python3. The jail runs this machine's Python 3.11 at the image's path, and
# puts in place of /usr/bin/python3 a stand-in that refuses to run, as 3.9 would refuse the runtime.
IMAGE_INTERPRETERS = {"/usr/bin/python3.11": "/usr/bin/python3.11"}
IMAGE_SYSTEM_PYTHON3 = "/usr/bin/python3"
IMAGE_SYSTEM_PYTHON3_VERSION = "3.9"
PYTHON3_STANDIN = (
    "#!/bin/sh\necho \"emulated enclave: the image's /usr/bin/python3 is Amazon Linux 2023's "
    f"Python {IMAGE_SYSTEM_PYTHON3_VERSION}, which cannot run this code; name the image's "
    "/usr/bin/python3.11\" >&2\nexit 1\n")

# -- operating system files: this machine's /usr stands for the image's, minus what the image lacks
HOST_USR = "/usr"
HIDDEN_HOST_PATHS = ("/usr/lib/python3/dist-packages",)  # Debian's own Python packages
HOST_ETC_FILES = ("/etc/ld.so.cache",)  # the dynamic linker's view of this machine's libraries
HOST_DEVICES = ("null", "zero", "full", "random", "urandom")

# -- what the init gives the image's command (aws-nitro-enclaves-sdk-bootstrap init/init.c) -------
INIT_PATH = "/sbin:/usr/sbin:/bin:/usr/bin"  # execvpe looks the command up here
INIT_WORKING_DIRECTORY = "/"  # chroot /rootfs; the image's WORKDIR is not applied
LINUXKIT_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
LINUXKIT_RESOLV_CONF = ""
# mount points of the init's tmpfs, each nosuid,nodev,noexec (not temporary files of ours)
NOEXEC_TMPFS = {"/run": "mode=0755", "/tmp": "mode=1777", "/dev/shm": None}  # noqa: S108

# -- the NSM: /dev/nsm is the simulated NSM's Unix socket, bind-mounted ---------------------------
NSM_DEVICE = "/dev/nsm"
NSM_TRANSPORT = "simulation"  # the runtime's --nsm-transport in the jail; production: "device"

# -- TLS to KMS: the local KMS's certificate for kms.<region>.amazonaws.com is issued by a test CA,
# which the jail appends to botocore's CA bundle in the image's site directory -----------------
BOTOCORE_CA_BUNDLE = "botocore/cacert.pem"  # relative to the image's site directory


@dataclass(frozen=True)
class Difference:
    """One way the emulated enclave is not the real one."""

    topic: str
    real: str
    emulated: str


DIFFERENCES: tuple[Difference, ...] = (
    Difference("socket family",
               "AF_VSOCK: the runtime listens on (any, EnclavePort); the bridge connects to "
               "(3, VsockProxyPort)",
               "a Unix socket per vsock address, cid<CID>-port<PORT>.sock in one directory "
               "mounted at /vsock; the enclave's CID is 16"),
    Difference("NSM transport",
               "/dev/nsm character device, one ioctl per request",
               "/dev/nsm is the simulated NSM's Unix socket (same CBOR bytes), bind-mounted; the "
               "runtime is told so by --nsm-transport simulation"),
    Difference("attestation root",
               "AWS Nitro Enclaves Root-G1; PCRs measured by the hypervisor",
               "a local development root; PCRs computed from enclave/ and containers/"),
    Difference("KMS and its certificate",
               "kms.<region>.amazonaws.com with a public certificate",
               "the local KMS serving TLS for that name with a certificate from a test CA; the "
               "CA is appended to botocore's cacert.pem in the image's site directory"),
    Difference("vsock-proxy",
               "vsock-proxy on the parent, allow list /etc/nitro_enclaves/vsock-proxy.yaml, "
               "remote resolved by the parent's DNS",
               "client/sim/vsock_proxy.py with the same allow list check; the allowed name "
               "resolves to the local KMS's TLS port"),
    Difference("kernel and init",
               "the EIF's kernel and init (nitro-cli's blobs), a VM with its own memory",
               "this machine's kernel; an init stand-in in mount, network and PID namespaces"),
    Difference("interpreter",
               "Amazon Linux 2023: /usr/bin/python3.11 and /usr/bin/python3 = Python 3.9",
               "this machine's /usr/bin/python3.11 at the same path; /usr/bin/python3 is a "
               "stand-in that exits with an error, as 3.9 cannot run the runtime"),
    Difference("operating system files",
               "the image's /usr, /etc and libraries (Amazon Linux 2023, aarch64)",
               "this machine's /usr read-only (its Debian dist-packages hidden), an /etc with "
               "only hosts, resolv.conf and the dynamic linker's cache"),
    Difference("image packages",
               "pip install --target /opt/enclave/site of the aarch64 wheels at image build",
               "the same command and hashes with the x86_64 wheels, cached per requirement files"),
    Difference("devices and /sys",
               "devtmpfs /dev, sysfs, cgroups, devpts",
               "a tmpfs /dev with null, zero, full, random, urandom and /dev/nsm; no /sys"),
)
