"""The names `digits train` accepts, in a module without Keras: the CLI checks options
against these at start-up, and the modules that build and train models use the same tuples."""

from __future__ import annotations

#: Architectures ``model_store.architectures.build`` knows, in the order help text lists them.
ARCHITECTURES = ("mlp", "cnn", "cnn-lite", "cnn-wide")

#: Architectures that can be ensemble members (the origin's MLP is a baseline, not a member).
ENSEMBLE_ARCHITECTURES = tuple(a for a in ARCHITECTURES if a != "mlp")

#: Training precisions: float32, or mixed bfloat16 (faster on CPUs with AVX512_BF16, see the
#: README's Model section; the saved model is float32 either way).
PRECISIONS = ("float32", "bf16")
