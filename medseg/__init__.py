"""medseg: CT organ segmentation with traceable, checked and audited results."""

from medseg.offline import telemetry_off

__version__ = "0.1.0"

telemetry_off()
