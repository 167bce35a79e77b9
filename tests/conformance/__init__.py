"""SPIRE's own KeyManager conformance suite, run by Go against the frozen binary (see test_conformance.py)."""
