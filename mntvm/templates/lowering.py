"""The network lowered for our templates: every conv, the pooling and the FC become template PrimFuncs."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mntvm.model.inference import inference_module
from mntvm.model.network import MobileNetConfig
from mntvm.templates.cpu import lower_cpu
from mntvm.templates.cuda import VECTOR_BITS


def has_templates(profile) -> bool:
    """Whether the profile's family is scheduled by our templates (CPUs and CUDA; the other GPU
    families use DLight rules only)."""
    return not profile.is_gpu or profile.family == "cuda"


def lower(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray], profile):
    """The templates' lowered module: every conv, the pooling and the FC are template PrimFuncs
    (unscheduled), in the channel-blocked layout of the profile's vector width (float4 on CUDA)."""
    bits = VECTOR_BITS if profile.is_gpu else profile.vector_bits
    return lower_cpu(inference_module(cfg, weights), profile.tvm_target(), bits)
