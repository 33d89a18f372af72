"""Plain-Python tools the sealing pipeline's builds call (see `pipeline/buildspecs/`)."""
