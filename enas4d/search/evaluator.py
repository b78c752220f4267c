"""One-pass candidate evaluation and its on-disk cache (JSON lines, append-only, resumable).

Evaluating an architecture: make it the active subnet with every exit enabled, re-estimate its
BatchNorm statistics on the cached BN estimation batches (a fixed subset of the *training* split),
run the validation split once, and keep each exit's predicted class and confidence per image.
Everything the search needs afterwards (thresholds for any budget, the static single-exit
accuracy, the Pareto front) is computed from that :class:`~enas4d.search.calibrate.ExitTable`.

The cache file starts with a header line (format version, a fingerprint of everything that
determines the numbers: checkpoint bytes, data, validation labels, BatchNorm re-estimation,
confidence measure) followed by one line per architecture. The file name carries a hash of the
fingerprint, so searches with other budgets on the same checkpoint share it, and anything that
would change the numbers gets a new file. A killed search leaves at worst a partial last line,
which is dropped (by rewriting the file through a temp file and ``os.replace``) when reopened.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from enas4d.models import MultiStageSupernet
from enas4d.search.calibrate import ExitTable, confidence
from enas4d.utils.files import file_digest, write_atomic  # file_digest: re-exported for search
from enas4d.space import Subnet
from enas4d.nn.bn import BNEstimationSet

__all__ = ["CACHE_VERSION", "SearchError", "EvalCache", "CandidateEvaluator", "file_digest", "fingerprint_name"]

CACHE_VERSION = 1


class SearchError(ValueError):
    """A search that cannot run as configured; the message is one line naming the setting."""


def _pack(a: np.ndarray) -> dict[str, Any]:
    """Array -> JSON-ready dict (little-endian bytes in base64)."""
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.newbyteorder("<").str, "shape": list(a.shape),
            "b64": base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode("ascii")}


def _unpack(d: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`_pack`."""
    raw = base64.b64decode(d["b64"])
    return np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def fingerprint_name(fingerprint: dict[str, Any]) -> str:
    """16 hex characters identifying a fingerprint (used in the cache file name)."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheRecord:
    """One evaluated architecture: per-exit predictions and confidences on the validation split."""

    pred: np.ndarray  # (K, N) int64 predicted class of every exit
    conf: np.ndarray  # (K, N) float32 confidence of every exit, in [0, 1]
    seconds: float  # wall time of the evaluation (BN re-estimation + validation pass)


class EvalCache:
    """Append-only JSON-lines cache of evaluated architectures for one fingerprint.

    Args:
        path: the cache file (created with its header if missing).
        fingerprint: what the numbers depend on; a file with another fingerprint is an error.
        labels: (N,) validation labels (stored in the header, so a record reproduces correctness).
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any], labels: np.ndarray):
        self.path = Path(path)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._records: dict[str, CacheRecord] = {}
        header = {"kind": "header", "version": CACHE_VERSION, "fingerprint": fingerprint,
                  "labels": _pack(self.labels.astype(np.int32))}
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite([json.dumps(header)])
            return
        lines = self.path.read_text().split("\n")
        try:
            head = json.loads(lines[0])
        except json.JSONDecodeError as e:
            raise SearchError(f"search cache: {self.path} has an unreadable header; delete it to start over") from e
        if head.get("version") != CACHE_VERSION or head.get("fingerprint") != json.loads(
                json.dumps(fingerprint)):
            raise SearchError(f"search cache: {self.path} belongs to another checkpoint/data/settings; "
                              "delete it or set cache_dir elsewhere")
        valid, dropped = [lines[0]], 0
        for line in lines[1:]:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self._records[rec["key"]] = CacheRecord(_unpack(rec["pred"]).astype(np.int64),
                                                        _unpack(rec["conf"]), float(rec["seconds"]))
                valid.append(line)
            except (json.JSONDecodeError, KeyError, ValueError, TypeError):
                dropped += 1  # a line cut short by a killed process
        if dropped or not lines[-1] == "":
            self._rewrite(valid)

    def _rewrite(self, lines: list[str]) -> None:
        """Replace the file by ``lines`` atomically (temp file in the same folder, then os.replace)."""
        write_atomic(self.path, ("\n".join(lines) + "\n").encode())

    def __len__(self) -> int:
        """Number of cached architectures."""
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        """Is architecture ``key`` (``Subnet.to_json`` with all exits) cached?"""
        return key in self._records

    def keys(self) -> Iterator[str]:
        """Cached architecture keys, in file order."""
        return iter(list(self._records))

    def get(self, key: str) -> CacheRecord | None:
        """The record of ``key``, or None."""
        return self._records.get(key)

    def put(self, key: str, record: CacheRecord) -> None:
        """Append one record as a single line (one write, flushed and fsynced)."""
        small = record.pred.size == 0 or int(record.pred.max()) < 2**15  # classes fit int16 (half the bytes)
        pred = record.pred.astype(np.int16 if small else np.int32)
        line = json.dumps({"kind": "candidate", "key": key, "pred": _pack(pred),
                           "conf": _pack(record.conf.astype(np.float32)), "seconds": record.seconds})
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records[key] = record


class CandidateEvaluator:
    """Evaluates architectures of one supernet once each, through an :class:`EvalCache`.

    Args:
        net: the supernet (its active subnet is changed; restored by callers if they care); batches
            are moved to its device, results come back to the CPU.
        bn_set: the BN estimation subset (training split), held in memory.
        val_batches: the validation split as ``(x, y)`` batches, cached in memory.
        measure: confidence measure (see :func:`~enas4d.search.calibrate.confidence`).
        cache: where results are stored; ``None`` keeps them in memory only.
    """

    def __init__(self, net: MultiStageSupernet, bn_set: BNEstimationSet,
                 val_batches: Sequence[tuple[Tensor, Tensor]], measure: str, cache: EvalCache | None):
        if not val_batches or sum(len(y) for _, y in val_batches) == 0:
            raise SearchError("data: the validation split is empty; the search needs validation images")
        self.net, self.bn_set, self.val_batches, self.measure = net, bn_set, list(val_batches), measure
        self.labels = torch.cat([y for _, y in self.val_batches]).numpy().astype(np.int64)  # (N,)
        self.cache = cache
        if cache is not None and not np.array_equal(cache.labels, self.labels):
            raise SearchError(f"search cache: {cache.path} was made with other validation labels")
        self._memory: dict[str, CacheRecord] = {}
        self._macs: dict[Subnet, tuple[list[int], list[int]]] = {}
        self.hits = 0  # evaluations answered from the cache
        self.misses = 0  # evaluations that ran the network
        self.network_seconds = 0.0

    @staticmethod
    def key(arch: Subnet) -> str:
        """Cache key of an architecture: its JSON with every exit enabled."""
        return arch.with_all_exits().to_json()

    def stage_macs(self, arch: Subnet) -> tuple[list[int], list[int]]:
        """``net.stage_macs(arch)`` (body and head MACs), computed once per architecture (exits do not
        change it; the lists are shared, not to be modified). The search asks for them many times per
        architecture (feasibility, scoring, fronts)."""
        s = arch.with_all_exits()
        if s not in self._macs:
            self._macs[s] = self.net.stage_macs(s)
        return self._macs[s]

    def is_cached(self, arch: Subnet) -> bool:
        """Would evaluating ``arch`` be free?"""
        k = self.key(arch)
        return k in self._memory or (self.cache is not None and k in self.cache)

    @torch.inference_mode()
    def _forward(self) -> tuple[np.ndarray, np.ndarray]:
        """Validation pass of the active subnet on the network's device: (K, N) predictions and confidences."""
        device = next(self.net.parameters()).device
        preds: list[list[Tensor]] = []
        confs: list[list[Tensor]] = []
        for x, _ in self.val_batches:  # batches stay on the CPU; one moves to the device at a time
            outs = self.net(x.to(device))  # list of K (n, classes)
            pc = [confidence(o, self.measure) for o in outs]
            preds.append([p for p, _ in pc])
            confs.append([c for _, c in pc])
        pred = torch.stack([torch.cat(col) for col in zip(*preds)])  # (K, N)
        conf = torch.stack([torch.cat(col) for col in zip(*confs)])
        return pred.cpu().numpy().astype(np.int64), conf.cpu().numpy().astype(np.float32)

    def record(self, arch: Subnet) -> CacheRecord:
        """Predictions and confidences of ``arch`` (all exits), from the cache or one network pass."""
        k = self.key(arch)
        rec = self._memory.get(k) or (self.cache.get(k) if self.cache is not None else None)
        if rec is not None:
            self.hits += 1
            return rec
        start = time.perf_counter()
        self.bn_set.reestimate(self.net, arch.with_all_exits())
        self.net.eval()
        pred, conf = self._forward()
        rec = CacheRecord(pred, conf, time.perf_counter() - start)
        self.misses += 1
        self.network_seconds += rec.seconds
        if self.cache is not None:
            self.cache.put(k, rec)
        else:
            self._memory[k] = rec
        return rec

    def table(self, arch: Subnet) -> ExitTable:
        """The :class:`ExitTable` of ``arch``."""
        rec = self.record(arch)
        return ExitTable(rec.pred == self.labels[None, :], rec.conf)

    def cached_keys(self) -> list[str]:
        """Keys of every architecture evaluated so far (this run, or earlier runs via the cache)."""
        keys = list(self._memory)
        if self.cache is not None:
            keys += list(self.cache.keys())
        return keys
