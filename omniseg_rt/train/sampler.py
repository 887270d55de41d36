"""Batches of one tissue each: the loss of a partially labelled patch covers only its own tissue."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np


class TaskBatchSampler:
    """Yields lists of dataset indices that share a task id; shuffled per epoch, deterministic.

    ``repeats``: task id -> how many times its patches are drawn per epoch (default 1; each pass
    shuffled anew), to give tissues that lag behind more steps without running the others longer.
    ``set_epoch(e)`` makes epoch ``e`` the same batches whatever happened before (resume-safe).
    """

    def __init__(self, task_ids: Sequence[int], batch_size: int, seed: int = 0,
                 repeats: Mapping[int, int] | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if any(r < 1 for r in (repeats or {}).values()):
            raise ValueError("repeats must be >= 1")
        self.task_ids = list(task_ids)
        self.batch_size = batch_size
        self.seed = seed
        self.repeats = dict(repeats or {})
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        out = []
        for task in sorted(set(self.task_ids)):
            idx = np.array([i for i, t in enumerate(self.task_ids) if t == task])
            for _ in range(self.repeats.get(task, 1)):
                rng.shuffle(idx)
                out += [idx[i:i + self.batch_size].tolist() for i in range(0, len(idx), self.batch_size)]
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        counts = np.bincount(self.task_ids) if self.task_ids else np.array([])
        return int(sum(-(-c // self.batch_size) * self.repeats.get(t, 1) for t, c in enumerate(counts) if c))
