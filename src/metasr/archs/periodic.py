"""Periodic longitude for the backbones: convolutions that wrap along the width.

A global latitude/longitude field is periodic in longitude: column ``w − 1`` is the western
neighbour of column 0. With ``periodic_lon=True`` a network swaps every zero-padded
``nn.Conv2d`` of its backbone for a :class:`PeriodicLonConv2d`, which pads the width circularly
and the height with zeros (latitude has edges, the poles). ``nn.Conv2d``'s own
``padding_mode="circular"`` would wrap the height too, so it cannot be used.

The swap keeps the module paths and the ``weight``/``bias`` parameters (the same tensors), so
state_dict keys are unchanged and checkpoints of the non-periodic network (official ones
included) load into the periodic one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PeriodicLonConv2d", "wrap_longitude"]


class PeriodicLonConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose padding wraps along the width and is zero along the height.

    ``padding=(p_h, p_w)`` means: ``p_w`` columns are copied circularly onto each side, then the
    convolution runs with zero padding ``(p_h, 0)``. Parameters are those of ``nn.Conv2d``.

    Shape:
        ``(N, Cin, H, W)`` → ``(N, Cout, H', W')`` as ``nn.Conv2d``; needs ``p_w ≤ W``.
    """

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ph, pw = self.padding  # type: ignore[misc]  # ints: from_conv refuses padding="same"
        if pw:
            input = F.pad(input, (pw, pw, 0, 0), mode="circular")
        return F.conv2d(input, weight, bias, self.stride, (ph, 0), self.dilation, self.groups)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> PeriodicLonConv2d:
        """The periodic twin of ``conv``, sharing its ``weight`` and ``bias`` tensors.

        Raises:
            ValueError: if ``conv`` pads other than with zeros and explicit integer sizes.
        """
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"periodic_lon wraps zero-padded convolutions with integer padding, got "
                f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
            )
        new = cls.__new__(cls)
        # Same attributes (hyper-parameters, hooks, training flag) and the same Parameter
        # objects: a shallow copy of the module's state, then the class changes.
        new.__dict__ = dict(conv.__dict__)
        new._parameters = dict(conv._parameters)
        new._buffers = dict(conv._buffers)
        new._modules = dict(conv._modules)
        return new


def wrap_longitude(module: nn.Module) -> int:
    """Swap, in place, every ``nn.Conv2d`` under ``module`` that pads the width for a
    :class:`PeriodicLonConv2d` at the same path; returns how many were swapped.

    Unpadded convolutions (1×1) are left alone: they see no neighbours.
    """
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (
                type(child) is nn.Conv2d
                and not isinstance(child.padding, str)
                and child.padding[1] > 0
            ):
                setattr(parent, name, PeriodicLonConv2d.from_conv(child))
                swapped += 1
    return swapped
