"""Online weighted k-NN monitor of the student's representation during pretraining.

Every ``monitor.knn_every`` optimizer steps (and at the last step) the student's pooled backbone
features (``ReActNetA.forward_features``: the 14 entries the linear evaluation freezes, before the MLP
head it retrains) are extracted for a class-balanced capped subset of ``data.train_labeled_list`` (the
memory bank) and of ``data.val_list`` (the queries), with the deterministic evaluation transform
(resize + center crop). Each rank extracts its shard; bank features are all-gathered; each rank
classifies its queries (:func:`burn.monitor.diagnostics.knn_predict`) and the hit counts are summed.

Training is left exactly as it was: the student runs in eval mode under ``no_grad`` (BatchNorm
statistics untouched) and returns to its previous mode; the process's python / numpy / torch / CUDA
RNG states are saved before and restored after (a DataLoader draws a seed from torch's generator);
the monitor's loaders are its own, so the training loader's position does not move.
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.distributed as dist
from torch import nn

from burn.data.loaders import DatasetError, build_subset_eval_loader
from burn.engine.distributed import DistInfo, rng_state, set_rng_state
from burn.monitor.diagnostics import knn_predict


def gather_rows(info: DistInfo, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (shapes may differ in dim 0), concatenated in rank order."""
    if not info.distributed:
        return rows
    counts = [torch.zeros(1, dtype=torch.int64, device=rows.device) for _ in range(info.world_size)]
    dist.all_gather(counts, torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device))
    counts = [int(c) for c in counts]
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


class KnnMonitor:
    """Built once per stage (the loaders are only iterated when the monitor runs); call it with the
    student backbone to get ``{"top1", "seconds", "bank", "queries"}``. Collective: every rank calls it
    at the same steps."""

    def __init__(
        self,
        monitor_cfg,
        data_cfg,
        info: DistInfo,
        *,
        seed: int,
        dtype: torch.dtype,
        autocast=None,
        channels_last: bool = False,
    ):
        self.cfg, self.info = monitor_cfg, info
        self.every = int(monitor_cfg.knn_every)
        if self.every < 1 or int(monitor_cfg.knn_k) < 1 or not monitor_cfg.knn_temperature > 0:
            raise ValueError(
                "monitor.knn_every and monitor.knn_k must be >= 1 and monitor.knn_temperature > 0 "
                f"(got {self.every}, {monitor_cfg.knn_k}, {monitor_cfg.knn_temperature})"
            )
        self.autocast = autocast
        self.channels_last = channels_last and info.device.type == "cuda"
        common = dict(
            batch_size=int(monitor_cfg.knn_batch),
            shard_id=info.rank,
            num_shards=info.world_size,
            seed=seed,
            dtype=dtype,
        )
        try:  # resolving the lists now makes a missing labelled split an error before training starts
            self.bank_loader = build_subset_eval_loader(
                data_cfg, split="train_labeled", max_samples=int(monitor_cfg.knn_bank_size), **common
            )
            self.query_loader = build_subset_eval_loader(
                data_cfg, split="val", max_samples=int(monitor_cfg.knn_query_size), **common
            )
        except DatasetError as err:
            raise DatasetError(f"k-NN monitor: {err} (monitor.knn=false turns the monitor off)") from err

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.every == 0 or step == total_steps

    def __call__(self, student: nn.Module) -> dict[str, float]:
        started = time.perf_counter()
        saved_rng = rng_state()
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                bank, bank_labels = self._features(student, self.bank_loader)
                queries, query_labels = self._features(student, self.query_loader)
        finally:
            student.train(was_training)
            set_rng_state(saved_rng)
        bank, bank_labels = gather_rows(self.info, bank), gather_rows(self.info, bank_labels)
        counts = torch.zeros(2, dtype=torch.float64, device=self.info.device)  # hits, queries
        if queries.shape[0]:
            predicted = knn_predict(
                bank, bank_labels, queries, k=int(self.cfg.knn_k), temperature=float(self.cfg.knn_temperature)
            )
            counts[0] = predicted.eq(query_labels).sum()
            counts[1] = queries.shape[0]
        if self.info.distributed:
            dist.all_reduce(counts)
        hits, total = counts.tolist()
        return {
            "top1": 100.0 * hits / max(total, 1.0),
            "seconds": time.perf_counter() - started,
            "bank": bank.shape[0],
            "queries": int(total),
        }

    def _features(self, student: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.info.device
        features, labels = [], []
        for images, batch_labels in loader:
            images = images.to(device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with self.autocast() if self.autocast is not None else contextlib.nullcontext():
                features.append(student.forward_features(images).float())
            labels.append(batch_labels.to(device, torch.int64))
        if not features:  # this rank's shard is empty (fewer images than ranks)
            return (torch.empty(0, student.feat_dim, device=device), torch.empty(0, dtype=torch.int64, device=device))
        return torch.cat(features), torch.cat(labels)
