"""[torch] The Omni-Seg network and its checkpoints.

Public API: :func:`load_checkpoint` and :class:`OmniSeg` (``forward_features``,
``forward_heads``, ``forward_tasks``).
"""

from omniseg_rt.model.checkpoint import (
    describe_checkpoint,
    load_checkpoint,
    read_checkpoint,
    upstream_state_dict,
)
from omniseg_rt.model.network import FAMILIES, MIDL, SCALE, OmniSeg, margins

__all__ = [
    "margins",
    "FAMILIES",
    "MIDL",
    "SCALE",
    "OmniSeg",
    "describe_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "upstream_state_dict",
]
