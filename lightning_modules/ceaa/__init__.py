"""CEAA: retrieval-based educational auto-tagging with a bi-encoder (see docs/ceaa.md)."""
