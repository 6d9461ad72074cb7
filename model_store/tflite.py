"""TFLite models: converting a Keras model (TensorFlow) and running one (LiteRT, no TensorFlow).

Running goes through ``ai_edge_litert``, the standalone TFLite interpreter: it imports in about
0.1 s against TensorFlow's 3 s, so a worker on the int8 path (a stored, hash-checked
``model.int8.tflite``, see ``model_store.loading.load_tflite``) never imports TensorFlow or
Keras. Only converting (``convert``, run by `digits models speed --record`) needs TensorFlow.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

Runner = Callable[[NDArray[np.float32]], NDArray[np.float32]]

#: Conversion modes: float32, int8 weights with dynamic-range activations, full int8.
MODES = ("float32", "dynamic", "int8")


def convert(model: Any, mode: str, calibration: NDArray[np.float32] | None = None) -> bytes:
    """The TFLite flatbuffer of a Keras ``model`` (imports TensorFlow). ``calibration`` is
    needed only for full int8 (``mode="int8"``), which calibrates activation ranges on it."""
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"unknown TFLite mode {mode!r}; known: {', '.join(MODES)}")
    with tempfile.TemporaryDirectory(prefix="digits-tflite-") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "int8":
            if calibration is None or not len(calibration):
                raise ValueError("full int8 needs calibration rows")
            rows = calibration

            def representative() -> Iterable[list[NDArray[np.float32]]]:
                for i in range(0, len(rows), 50):
                    yield [rows[i : i + 50]]

            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.float32  # quantize/dequantize inside
            converter.inference_output_type = tf.float32
        return bytes(converter.convert())


def interpreter_runner(flat: bytes, threads: int | None = None) -> tuple[Runner, Any, Any]:
    """A LiteRT interpreter for the flatbuffer ``flat``: the scoring callable, and the model's
    input and output shapes with ``None`` as batch axis (as Keras reports them)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flat, num_threads=threads or os.cpu_count())
    in_detail = interpreter.get_input_details()[0]
    out_detail = interpreter.get_output_details()[0]
    inp, out = in_detail["index"], out_detail["index"]
    size = [-1]

    def run(x: NDArray[np.float32]) -> NDArray[np.float32]:
        if size[0] != len(x):
            interpreter.resize_tensor_input(inp, list(x.shape), strict=False)
            interpreter.allocate_tensors()
            size[0] = len(x)
        interpreter.set_tensor(inp, np.ascontiguousarray(x, np.float32))
        interpreter.invoke()
        return np.array(interpreter.get_tensor(out), np.float32)

    in_shape = (None, *(int(d) for d in in_detail["shape"][1:]))
    out_shape = (None, *(int(d) for d in out_detail["shape"][1:]))
    return run, in_shape, out_shape


class TFLiteModel:
    """A TFLite interpreter behind the one method the scoring code calls (``predict_on_batch``),
    so workers score through it unchanged. One interpreter is not re-entrant: a lock serialises
    calls (the draw page's threads share a process's model)."""

    def __init__(self, run: Runner, input_shape: Any, output_shape: Any) -> None:
        self._run = run
        self._lock = threading.Lock()
        self.input_shape = input_shape
        self.output_shape = output_shape

    @classmethod
    def from_bytes(cls, flat: bytes, threads: int | None = None) -> TFLiteModel:
        run, in_shape, out_shape = interpreter_runner(flat, threads)
        return cls(run, in_shape, out_shape)

    def predict_on_batch(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        with self._lock:
            return self._run(np.asarray(x, np.float32))
