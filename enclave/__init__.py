"""The in-enclave runtime: attestation, attested KMS decrypt, unsealing, the host-facing API."""
