"""relssl: self-supervised visual representation learning beyond instance discrimination."""

__version__ = "0.1.0"
