from .dual import DualViTBackbone
from .eva02 import EVA02Encoder
from .sam_vit import SAM_ENCODER_SIZES, build_sam_image_encoder, resize_sam_encoder_state_dict

__all__ = ["DualViTBackbone", "EVA02Encoder", "SAM_ENCODER_SIZES", "build_sam_image_encoder", "resize_sam_encoder_state_dict"]
