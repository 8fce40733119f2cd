"""LiteRT back end: ``model.tflite`` (float32) run by ai-edge-litert's interpreter with XNNPACK.

An interpreter is not re-entrant and holds one input shape at a time. Each call takes an idle
interpreter already sized for its row count, else any idle one (resized), else a new one, and
puts it back: there are never more interpreters than calls that ran at once, and a steady batch
size never resizes (a resize re-plans XNNPACK's operators and re-allocates the tensors).

XNNPACK is the interpreter's default delegate for float32 models; it runs its operators on
``pthreadpool`` threads, which set no affinity and so stay inside the process's CPU set. Threads
per interpreter: ``--tensorflow_intra_op_parallelism``, by default one per CPU of that set.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from contract import SIGNATURE_NAME, TFLITE_FILENAME
from serving.runtimes.base import (
    Runtime,
    RuntimeLoadError,
    RuntimeOptions,
    Signature,
    TensorSpec,
    empty_outputs,
)
from serving.runtimes.cpuset import threads_or_cpu_count


@dataclass
class _Sized:
    """An interpreter, its signature runner and the row count its tensors are allocated for."""

    interpreter: Any
    runner: Any
    rows: int = -1


def _spec(key: str, detail: Mapping[str, Any]) -> TensorSpec:
    shape = tuple(int(d) for d in detail["shape_signature"])
    return TensorSpec(key, np.dtype(detail["dtype"]), shape, tensor_name=str(detail["name"]))


class LiteRtRuntime(Runtime):
    """``model.tflite`` in LiteRT's interpreter (XNNPACK delegate); a pool of interpreters."""

    kind = "litert"

    def __init__(self, version_dir: Path, options: RuntimeOptions) -> None:
        super().__init__(version_dir, options)
        path = self.model_file(TFLITE_FILENAME)
        if options.device != "cpu":
            raise RuntimeLoadError(f"the litert runtime runs on cpu only, not {options.device}")
        self.threads = threads_or_cpu_count(options.intra_op_threads)
        self._model = path.read_bytes()  # one read; every interpreter is built from these bytes
        self._lock = threading.Lock()
        self._idle: list[_Sized] = []
        try:
            first = self._new()
        except Exception as exc:
            raise RuntimeLoadError(f"LiteRT cannot load {path}: {exc}") from exc
        inputs = first.runner.get_input_details()
        outputs = first.runner.get_output_details()
        self._signature = Signature(
            SIGNATURE_NAME,
            {k: _spec(k, d) for k, d in inputs.items()},
            {k: _spec(k, d) for k, d in outputs.items()},
        )
        self._output_names = list(outputs)
        self._idle.append(first)

    def _new(self) -> _Sized:
        interpreter = Interpreter(model_content=self._model, num_threads=self.threads)
        if SIGNATURE_NAME not in interpreter.get_signature_list():
            raise RuntimeLoadError(f"model.tflite has no {SIGNATURE_NAME} signature")
        return _Sized(interpreter, interpreter.get_signature_runner(SIGNATURE_NAME))

    def _take(self, rows: int) -> _Sized:
        with self._lock:
            for index, sized in enumerate(self._idle):
                if sized.rows == rows:
                    return self._idle.pop(index)
            if self._idle:
                return self._idle.pop()
        return self._new()

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return {SIGNATURE_NAME: self._signature}

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else self._output_names
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        if rows == 0:
            return empty_outputs(self._signature, names)
        sized = self._take(rows)
        try:
            # The runner resizes and re-allocates only when the input shape changed.
            results = sized.runner(**inputs)
            sized.rows = rows
            # Its outputs are copies (get_tensor), safe to keep once the interpreter is reused.
            return {name: results[name] for name in names}
        finally:
            with self._lock:
                self._idle.append(sized)

    def describe(self) -> dict[str, str]:
        return {"runtime": self.kind, "threads": str(self.threads), "delegate": "XNNPACK"}

    def delegation(self) -> DelegationSummary:
        """Which of the graph's operators XNNPACK took over (of an interpreter that has run)."""
        with self._lock:
            ready = next((s for s in self._idle if s.rows >= 0), None)
        if ready is None:
            raise RuntimeError("no interpreter has run yet: call predict first")
        return delegation_summary(ready.interpreter)


@dataclass(frozen=True)
class DelegationSummary:
    """The graph's operators and which of them run inside a delegate (XNNPACK) partition."""

    operators: list[str]  # the model's operators, in graph order
    delegated: list[str]  # those XNNPACK runs
    partitions: int  # DELEGATE nodes: each one runs a connected run of delegated operators

    @property
    def not_delegated(self) -> list[str]:
        """Operators the interpreter runs itself (its built-in kernels)."""
        remaining = list(self.operators)
        for name in self.delegated:
            remaining.remove(name)
        return remaining


def delegation_summary(interpreter: Any) -> DelegationSummary:
    """Operators replaced by delegate nodes, from the interpreter's nodes after allocation.

    LiteRT lists the original operators and then one ``DELEGATE`` node per partition, whose
    inputs and outputs are the partition's boundary tensors; the operators it replaced are those
    between them (walked back from each partition's outputs).
    """
    ops = interpreter._get_ops_details()  # the only view of the node list from Python
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): op for op in original for t in op["outputs"]}
    covered: set[int] = set()
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    for partition in partitions:
        boundary = {int(t) for t in partition["inputs"]}
        pending = [int(t) for t in partition["outputs"]]
        while pending:
            op = producer.get(pending.pop())
            if op is None or op["index"] in covered:
                continue
            covered.add(op["index"])
            pending.extend(int(t) for t in op["inputs"] if int(t) not in boundary)
    return DelegationSummary(
        operators=[op["op_name"] for op in original],
        delegated=[op["op_name"] for op in original if op["index"] in covered],
        partitions=len(partitions),
    )
