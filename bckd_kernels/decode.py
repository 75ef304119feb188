"""Box decoding of GFocal heads: what the detector, the ILDL reference and the tests share.

Regression logits ``[..., 4·(reg_max + 1)]`` hold, per box edge (left, top, right,
bottom), ``reg_max + 1`` contiguous bins; the decoded distance is the softmax integral
over the bins, in bins (multiply by the stride for pixels).
"""

import torch

__all__ = ["dfl_decode", "distance_to_box"]


def dfl_decode(reg, reg_max=16):
    """Softmax integral of GFocal regression logits.

    ``[..., 4 * (reg_max + 1)]`` (edges left, top, right, bottom, each
    ``reg_max + 1`` contiguous bins) -> distances ``[..., 4]`` in bins.
    """
    prob = reg.unflatten(-1, (4, reg_max + 1)).softmax(-1)
    bins = torch.arange(reg_max + 1, dtype=reg.dtype, device=reg.device)
    return (prob * bins).sum(-1)


def distance_to_box(points, dist):
    """Anchor points ``[N, 2]`` and distances ``[N, 4]`` (l, t, r, b) -> xyxy ``[N, 4]``."""
    return torch.cat([points - dist[:, :2], points + dist[:, 2:]], dim=-1)
