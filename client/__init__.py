"""Host-side client for sealed applications in Nitro Enclaves (`python -m client`)."""
