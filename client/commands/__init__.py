"""One module per `python -m client` command; each exposes `register(subparsers, parents)`."""
