"""medseg: CT organ segmentation with traceable, checked and audited results."""

__version__ = "0.1.0"
