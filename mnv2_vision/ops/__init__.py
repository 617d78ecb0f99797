"""SSD geometry and losses: anchors, box coding and matching, the multibox and segmentation losses, post-processing."""
from .anchors import DEFAULT_ASPECT_RATIOS, anchor_box_specs, num_anchors_per_location, ssd_anchors
from .boxes import BoxCoder, fp32_region, match_anchors
from .losses import seg_loss, ssd_multibox_loss
from .postprocess import PostprocessSettings, postprocess_detections, resize_boxes

__all__ = [
    "DEFAULT_ASPECT_RATIOS", "anchor_box_specs", "num_anchors_per_location", "ssd_anchors",
    "BoxCoder", "fp32_region", "match_anchors", "ssd_multibox_loss", "seg_loss", "PostprocessSettings",
    "postprocess_detections", "resize_boxes",
]
