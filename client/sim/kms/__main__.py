"""`python -m client.sim.kms --port 0 --state DIR`: serve the local KMS on 127.0.0.1 and print
the bound port."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from client.sim.kms.server import make_kms_server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.sim.kms",
                                     description="Local KMS endpoint for the simulation.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--state", required=True, help="simulation state directory")
    parser.add_argument("--tls-certificate", metavar="PEM",
                        help="serve HTTPS with this certificate (the emulated enclave's KMS)")
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-certificate")
    args = parser.parse_args(argv)
    server = make_kms_server("127.0.0.1", args.port, state_dir=Path(args.state))
    if args.tls_certificate:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.tls_certificate, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
