"""Stage 3: the scale of one coefficient unit per module (norm, raw, or iso-KL)."""

from steerexp.stages.intervene.scales import base_scales, calibrate_kl

__all__ = ["base_scales", "calibrate_kl"]
