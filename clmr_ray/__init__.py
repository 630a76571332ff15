"""clmr-ray: multi-format contrastive learning for music genre classification, on Ray."""

__version__ = "0.1.0"
