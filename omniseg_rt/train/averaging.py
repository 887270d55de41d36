"""An exponential moving average of the weights (Polyak averaging), for ``train --ema DECAY``.

After every optimizer step ``shadow = decay * shadow + (1 - decay) * weights``, for every
floating-point tensor of the state dict (integer buffers are copied). With 72 patches the
validation Dice of consecutive epochs swings by a few hundredths as each batch pulls the weights
towards its own patches; the average sits between those swings. The network has no batch norm, so
the averaged weights need no statistics recomputed. Validation, ``best.pth`` and ``last.pth``'s
``model`` are the averaged weights; the raw ones are kept beside them for ``--resume``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from omniseg_rt.errors import InvalidInputError


def check_decay(decay: float) -> None:
    if not 0 <= decay < 1:
        raise InvalidInputError(f"--ema {decay}: the averaging decay per step needs 0 <= decay < 1 "
                                "(0: off; 0.99 averages over about 100 steps)")


class WeightAverage:
    """The moving average of ``model``'s state dict, on the model's device."""

    def __init__(self, model: torch.nn.Module, decay: float, shadow: dict[str, torch.Tensor] | None = None) -> None:
        check_decay(decay)
        self.decay = decay
        device = next(model.parameters()).device
        source = model.state_dict() if shadow is None else shadow
        self.shadow = {k: v.detach().to(device, copy=True) for k, v in source.items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, value in model.state_dict().items():
            average = self.shadow[name]
            if average.is_floating_point():
                average.lerp_(value, 1.0 - self.decay)
            else:
                average.copy_(value)

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """Inside: ``model`` holds the averaged weights; yields a copy of its own (raw) weights,
        which it holds again afterwards."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield raw
        finally:
            model.load_state_dict(raw)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.shadow.items()}
