"""The Relax module that gets compiled: the network with batchnorm folded and weights bound."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mntvm.model import weights as W
from mntvm.model.network import MobileNetConfig, build_relax


def inference_module(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray]):
    """The Relax module that gets compiled: BN folded, weights bound, ``main(data) -> probs``."""
    import tvm
    from tvm import relax

    folded = W.fold_batchnorm(W.validate(cfg, weights))
    mod = build_relax(cfg, folded)
    consts = {k: tvm.runtime.tensor(v) for k, v in folded.items()}
    return relax.transform.BindParams("main", consts)(mod)
