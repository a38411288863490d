"""What both exporters (:mod:`rlft.export.artifact` for control policies, :mod:`rlft.export.vla` for
VLAs) share: writing a graph as ONNX, the PyTorch session that drives the deploy runner for
parity, the parity tolerance, batch-1 latency, provenance, and the error an export is refused with."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rlft.common.machine import cpu_description
from rlft.runtime.run_identity import RUN_FILE, library_versions, source_revision

OPSET = 18
TOLERANCE = 1e-5  # max abs error of ONNX Runtime against PyTorch that an export may have
LATENCY_CALLS = 300


class ExportError(ValueError):
    """A run folder that cannot be exported, with the reason."""


class TorchSession:
    """A PyTorch graph behind ONNX Runtime's ``run(output_names, feed)``, so that the deploy
    runner drives either; with ``record``, every feed is appended to ``feeds`` (parity inputs)."""

    def __init__(self, graph: nn.Module, input_names: list[str], output_names: list[str], record: bool = False):
        self.graph, self.input_names, self.output_names = graph, input_names, output_names
        self.record, self.feeds = record, []

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.record:
            self.feeds.append(feed)
        with torch.no_grad():
            out = self.graph(*(torch.as_tensor(feed[name]) for name in self.input_names))
        values = dict(zip(self.output_names, (o.numpy() for o in (out if isinstance(out, tuple) else (out,)))))
        return [values[name] for name in (names or self.output_names)]


def _percentiles(call: Callable[[], Any]) -> tuple[float, float]:
    """p50 and p99 of one call in milliseconds (after a warm-up)."""
    for _ in range(20):
        call()
    times = []
    for _ in range(LATENCY_CALLS):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def latency(torch_session: TorchSession, path: Path, one: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Batch-1 p50/p99 (ms) of PyTorch eager and of ONNX Runtime, each on one thread (as a robot
    process pinned to a core runs it; with more, both slow down whenever another process computes)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch_ms = _percentiles(lambda: torch_session.run(None, one))
    finally:
        torch.set_num_threads(threads)
    onnx_ms = _percentiles(lambda: session.run(None, one))
    return {"torch": {"p50": torch_ms[0], "p99": torch_ms[1]}, "onnxruntime": {"p50": onnx_ms[0], "p99": onnx_ms[1]},
            "cpu": cpu_description()}


def _is_all_true(x):
    """ONNX for ``aten._is_all_true`` (transformers' shape checks, e.g. LLaVA's image-token count)."""
    import onnx
    from onnxscript import opset18 as op

    return op.Cast(op.ReduceMin(op.Cast(x, to=onnx.TensorProto.INT64), keepdims=0), to=onnx.TensorProto.BOOL)


def torch_export(graph: nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str],
                 dynamic_shapes: tuple, path: Path) -> None:
    """``torch.onnx.export`` (dynamo) at ``OPSET``, one self-contained file, checked by ``onnx``."""
    import onnx

    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)  # argument checks are data-dependent branches
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" x4
    try:
        with warnings.catch_warnings():  # the exporter's own deprecation notices are not the user's to act on
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(graph, args, path, input_names=input_names, output_names=output_names,
                              opset_version=OPSET, dynamo=True, dynamic_shapes=dynamic_shapes, external_data=False,
                              verbose=False,  # no "[torch.onnx] ..." progress lines
                              custom_translation_table={torch.ops.aten._is_all_true.default: _is_all_true})
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
        registration.setLevel(level)
    onnx.checker.check_model(onnx.load(path))


def provenance(run_dir: Path, checkpoint: str, out: Path) -> dict[str, Any]:
    """``source`` and ``versions`` of ``metadata.json``: the run as a path relative to the export
    folder (it travels with them), the checkpoint, the config's hash, the rlft commit that trained
    the run (its ``run.json``) and the one that exported it; the libraries the artifact and the
    env depend on."""
    import onnx
    import onnxruntime

    record = run_dir / RUN_FILE
    trained = json.loads(record.read_text()).get("started") if record.is_file() else None
    return {"source": {"run": os.path.relpath(run_dir.resolve(), out.resolve()), "checkpoint": checkpoint,
                       "config_sha256": hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest(),
                       "trained_with": (trained or {}).get("git"), "exported_with": source_revision()},
            "versions": {**library_versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}}


def latency_table(latency: dict[str, Any]) -> list[str]:
    """``report.md``'s rows of :func:`latency`'s measurement."""
    return [f"Measured on {latency['cpu']}:", "",
            "| batch-1 latency (ms, one thread) | p50 | p99 |", "| --- | ---: | ---: |",
            f"| PyTorch eager | {latency['torch']['p50']:.3f} | {latency['torch']['p99']:.3f} |",
            f"| ONNX Runtime | {latency['onnxruntime']['p50']:.3f} | {latency['onnxruntime']['p99']:.3f} |"]
