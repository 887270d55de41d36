"""What keeps every tissue's dynamic head learning (found with ``tools/train_probe.py``; the runs
are in DEVELOPERS.md, "Training notes").

Omni-Seg generates each tissue's head (three 1x1 convolutions, 8 -> 8 -> 8 -> 2, with ReLUs) from
the window's pooled features through the controller. Trained jointly as the original code does,
four of the six heads of the first demo model predicted no foreground at all, even on their
training patches, while each of them learned when trained alone. Four causes, each with its fix:

- **Other tissues' steps moved a tissue's head.** A batch holds one tissue, so the controller
  columns of the five others get a zero gradient, yet Adam (and momentum) moves them on the
  momentum of earlier batches: about ten steps for every batch of their own, always in the same
  direction. Heads died (a ReLU layer dead on every pixel: constant output, no gradient ever
  again) within three epochs. :class:`OtherTissuesKept` leaves their weights and optimizer state
  exactly as they were.
- **The controller's step is about a hundred times an ordinary weight's.** Its input, the pooled
  feature vector, is non-negative (GAP after ReLU), so the gradients of the 256 weights feeding a
  generated number share a sign, Adam moves each by about ``lr``, and the number moves by ``lr``
  times the sum of the features. ``controller_lr_scale`` (0.2) tempers it.
- **The generated heads start as near-constant functions** (PyTorch's initialisation of a
  6144-input layer gives head weights of about 0.06). ``head_init="live"`` sets the controller's
  bias so that every head starts as a He-initialised MLP with slightly positive biases.
- **A sparse tissue's margin stayed below 0 everywhere.** The scale-aware controller has no bias
  of its own per tissue (its bias is shared by all six), and the per-pixel BCE, dominated by
  background, pulls a capillary or distal-tubule head towards "background" so that no pixel
  crosses the threshold although the head already ranks the pixels (ROC AUC 0.78-0.81).
  ``balanced_loss`` weighs each patch's foreground and background half each in the BCE term, so
  the best constant guess sits at a margin of 0 for every tissue.

One more, for generalisation rather than fit: a batch's labels say which pixels are *not* the
other tissues segmented at its magnification (a proximal tubule is neither a distal tubule nor an
artery), yet the original trains only the batch's own head. ``exclusion`` > 0 adds that term
(:func:`omniseg_rt.train.losses.exclusion_loss`) for :func:`exclusive_tissues`. Off by default:
on the 72 demo patches it cost the proximal tubules more than it gave the others (DEVELOPERS.md).

And two for the slide pipeline: neighbouring windows disagree because the GroupNorm statistics
are per window (measured: not the pooled conditioning). ``consistency`` > 0 asks a random crop of
each patch to predict what the whole patch predicts on the same pixels
(:func:`omniseg_rt.train.losses.consistency_loss`); ``context`` > 0 adds the loss of each patch
seen again inside a wider canvas of other tissue (:func:`omniseg_rt.train.losses.in_context`).
Both off by default (DEVELOPERS.md, "Overlap and blending").

Selecting the checkpoint by the mean validation Dice let four zeros hide behind two good
tissues: ``select="harmonic"`` scores an epoch by the harmonic mean of the per-tissue Dice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from omniseg_rt.errors import InvalidInputError
from omniseg_rt.model.heads import PARAM_LAYOUT

#: name -> the recipe's choices (TrainConfig fields); ``original`` is the paper's code
RECIPES = {
    "omniseg-rt": {"optimizer": "adam", "lr": 1e-3, "controller_lr_scale": 0.2, "head_init": "live",
                   "keep_other_tissues": True, "balanced_loss": True, "select": "harmonic"},
    "original": {"optimizer": "sgd", "lr": 1e-3, "controller_lr_scale": 1.0, "head_init": "default",
                 "keep_other_tissues": False, "balanced_loss": False, "select": "mean"},
}
#: tissue pairs that may cover the same pixel (the glomerular unit holds its tuft)
NESTED = frozenset({(2, 3), (3, 2)})
HEAD_BIAS = 0.1  # ReLU biases of the initial heads: every unit starts alive on typical inputs


#: He-normal standard deviations of the generated head weights (fan-in 8; ReLU gain 2 before a ReLU)
_WEIGHT_STD = {"w1": math.sqrt(2 / 8), "w2": math.sqrt(2 / 8), "w3": math.sqrt(1 / 8)}


def init_live_heads(model: torch.nn.Module, seed: int) -> None:
    """Set the controller's bias so that every generated head starts as an MLP with He-normal
    weights (std sqrt(gain / fan_in)) and ReLU biases of ``HEAD_BIAS``; the output bias is 0."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for name, count in PARAM_LAYOUT:
        if name in _WEIGHT_STD:
            parts.append(torch.randn(count, generator=generator) * _WEIGHT_STD[name])
        else:
            parts.append(torch.full((count,), HEAD_BIAS if name in ("b1", "b2") else 0.0))
    bias = model.controller_conv.bias
    with torch.no_grad():
        bias.copy_(torch.cat(parts).to(bias))


def param_groups(model: torch.nn.Module, lr: float, controller_lr_scale: float) -> list[dict]:
    """Optimizer parameter groups: the controller at ``lr * controller_lr_scale``, the rest at ``lr``."""
    if not controller_lr_scale > 0:
        raise InvalidInputError(f"controller learning-rate scale {controller_lr_scale}: must be > 0")
    controller = {id(p) for p in model.controller_conv.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in controller], "lr": lr},
            {"params": list(model.controller_conv.parameters()), "lr": lr * controller_lr_scale}]


def selection_score(val_dice: dict[str, float], how: str) -> float:
    """One number per epoch from the per-tissue validation Dice: their ``mean`` or ``harmonic`` mean
    (each Dice floored at 0.001, so that a tissue at 0 pulls the score to about 0)."""
    if how not in ("mean", "harmonic"):  # checked first: the trainer calls this with {} to check --select
        raise InvalidInputError(f"checkpoint selection {how!r}: choose harmonic or mean")
    values = list(val_dice.values())
    if not values:
        return float("nan")
    if how == "mean":
        return sum(values) / len(values)
    return len(values) / sum(1.0 / max(v, 1e-3) for v in values)


def exclusive_tissues(task: int) -> tuple[int, ...]:
    """The tissues segmented at ``task``'s magnification that never share a pixel with it
    (10x: distal and proximal tubules and arteries; the 5x unit and tuft are nested; 40x has one)."""
    from omniseg_rt.tissues import TISSUES

    group = TISSUES[task].group.task_ids
    return tuple(t for t in group if t != task and (task, t) not in NESTED)


def tissue_columns(model: torch.nn.Module, task: int, scale: int) -> torch.Tensor:
    """bool [C_in]: the controller's input columns that carry tissue ``task`` (at ``scale``) alone --
    the scale-aware family's (feature, task, scale) columns of that pair, the MIDL family's task
    one-hot column. Every other tissue-specific column is False; shared columns are not included."""
    from omniseg_rt.tissues import NUM_SCALES, NUM_TASKS

    width = model.controller_conv.weight.shape[1]
    mine = torch.zeros(width, dtype=torch.bool)
    if model.family == "midl":
        mine[width - NUM_TASKS + task] = True
    else:
        mine.view(-1, NUM_TASKS, NUM_SCALES)[:, task, scale] = True
    return mine


def own_columns(model: torch.nn.Module, tasks: Iterable[int]) -> torch.Tensor:
    """bool [C_in]: the union of :func:`tissue_columns` of ``tasks``, each at its own scale id."""
    from omniseg_rt.tissues import TISSUES

    mine = torch.zeros(model.controller_conv.weight.shape[1], dtype=torch.bool)
    for task in tasks:
        mine |= tissue_columns(model, task, TISSUES[task].scale_id)
    return mine


class OtherTissuesKept:
    """``with OtherTissuesKept(optimizer, model, task, scale, enabled): optimizer.step()`` leaves the
    controller columns of every other tissue -- weights and optimizer state -- exactly as they were
    (``also``: tissues whose heads the batch's loss trains too, e.g. by the exclusion term).

    Their gradient is zero in a batch of ``task``, but Adam (and momentum) would move them anyway
    on the momentum of earlier batches: each tissue's part of the controller would take about ten
    steps for every batch of its own, in the same direction (see the module docstring).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, task: int, scale: int,
                 enabled: bool = True, also: tuple[int, ...] = ()) -> None:
        self.optimizer, self.weight = optimizer, model.controller_conv.weight
        self.enabled = enabled
        if enabled:
            from omniseg_rt.tissues import NUM_TASKS

            specific = own_columns(model, range(NUM_TASKS))
            trained = tissue_columns(model, task, scale) | own_columns(model, also)
            self.frozen = (specific & ~trained).to(self.weight.device)
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> OtherTissuesKept:
        if self.enabled:
            tensors = [self.weight.data, *(v for v in self.optimizer.state.get(self.weight, {}).values()
                                           if torch.is_tensor(v) and v.shape == self.weight.shape)]
            self.saved = [(t, t[:, self.frozen].clone()) for t in tensors]
        return self

    def __exit__(self, *exc_info) -> None:
        for tensor, columns in self.saved:
            tensor[:, self.frozen] = columns
        self.saved = []


@torch.no_grad()
def head_activity(model: torch.nn.Module, images: torch.Tensor, task: int, scale: int) -> dict[str, torch.Tensor]:
    """How alive ``task``'s dynamic head is on ``images`` (float [N, 3, H, W] in [0, 1]).

    Returns ``live_1`` / ``live_2``: the share of positive pre-activations of the two hidden ReLU
    layers over all pixels and units, and ``margin`` [N, H, W]: foreground minus background logit.
    A head whose ``live_2`` is 0 outputs one constant everywhere and receives no gradient.
    """
    from omniseg_rt.model.heads import head_params, task_affine

    was_training = model.training
    model.eval()
    head_input, pooled = model.forward_features(images)
    conv = model.controller_conv
    index = torch.tensor([task], device=images.device), torch.tensor([scale], device=images.device)
    a, c = task_affine(model.family, conv.weight, conv.bias, *index)
    params = head_params(pooled, a, c)[:, 0]
    w1, w2, w3, b1, b2, b3 = torch.split(params, [n for _, n in PARAM_LAYOUT], dim=1)
    n, ch, h, w = head_input.shape
    z1 = w1.view(n, ch, ch) @ head_input.reshape(n, ch, h * w) + b1[..., None]
    z2 = w2.view(n, ch, ch) @ z1.relu() + b2[..., None]
    logits = w3.view(n, 2, ch) @ z2.relu() + b3[..., None]
    model.train(was_training)
    return {"live_1": (z1 > 0).float().mean(), "live_2": (z2 > 0).float().mean(),
            "margin": (logits[:, 1] - logits[:, 0]).view(n, h, w)}
