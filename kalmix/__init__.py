"""kalmix: data-centric corpus construction for text-embedding models."""

__version__ = "0.1.0"
