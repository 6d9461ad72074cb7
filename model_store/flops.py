"""What a forward pass costs and what this CPU could do: pure, no TensorFlow import.

Layers are recognised by class name and the CPU by /proc/cpuinfo text, so `digits bench` can
report the fraction of the CPU's float32 peak a model reaches without importing the runtime,
and tests can feed any CPU's cpuinfo text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_CONV = {"Conv1D", "Conv2D", "Conv3D"}
_DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
_SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
_COUNTED = _CONV | _DEPTHWISE | _SEPARABLE | {"Dense"}


# ------------------------------------------------------------------ FLOPs (pure)


def _shape(tensor_or_shape: Any) -> tuple[int, ...]:
    shape = getattr(tensor_or_shape, "shape", tensor_or_shape)
    return tuple(int(d) for d in shape[1:])


def _channels_last(layer: Any) -> bool:
    return getattr(layer, "data_format", "channels_last") != "channels_first"


def layer_macs(layer: Any, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one image through ``layer`` (0 for layers not counted).

    Shapes exclude the batch axis. Convolutions: output positions × output channels × kernel
    volume × input channels per group; depthwise: output positions × output channels × kernel
    volume; separable: depthwise then a 1×1 pointwise; Dense: inputs × units per position.
    Biases, batch normalisation, activations and pooling are not counted (a few per cent at
    most, and BN folds into the convolution at inference).
    """
    kind = type(layer).__name__
    if kind not in _COUNTED:
        return 0
    last = _channels_last(layer)
    c_in = in_shape[-1] if last else in_shape[0]
    c_out = out_shape[-1] if last else out_shape[0]
    spatial = out_shape[:-1] if last else out_shape[1:]
    positions = math.prod(spatial)
    if kind == "Dense":
        return math.prod(in_shape[:-1]) * in_shape[-1] * int(layer.units)
    kernel = math.prod(int(k) for k in layer.kernel_size)
    if kind in _CONV:
        groups = int(getattr(layer, "groups", 1) or 1)
        return positions * c_out * kernel * (c_in // groups)
    if kind in _DEPTHWISE:
        return positions * c_out * kernel
    multiplier = int(getattr(layer, "depth_multiplier", 1) or 1)  # separable
    return positions * c_in * multiplier * kernel + positions * c_in * multiplier * c_out


def _leaves(model: Any) -> Iterable[Any]:
    for layer in getattr(model, "layers", []):
        if getattr(layer, "layers", None):
            yield from _leaves(layer)  # an ensemble member (a nested model): its own layers
        else:
            yield layer


def flops_per_image(model: Any) -> int:
    """FLOPs of one image's forward pass: 2 × MACs of every counted layer, nested models (an
    ensemble's members) included, so an ensemble costs the sum of its members."""
    total = 0
    for layer in _leaves(model):
        if type(layer).__name__ in _COUNTED:
            total += layer_macs(layer, _shape(layer.input), _shape(layer.output))
    return 2 * total


# ------------------------------------------------------------------ CPU peak (pure)


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Vendor, family, model name, flags, logical CPUs and MHz from /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    processors = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            processors += 1
        fields.setdefault(key, value)
    return {
        "vendor": fields.get("vendor_id", ""),
        "family": int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None,
        "model_name": fields.get("model name", ""),
        "flags": set(fields.get("flags", "").split()),
        "processors": processors,
        "mhz": float(fields["cpu MHz"])
        if re.fullmatch(r"[\d.]+", fields.get("cpu MHz", ""))
        else None,
    }


def cpu_peak(
    cpuinfo: str | None = None, max_freq_khz: int | None = None, cores: int | None = None
) -> dict[str, Any]:
    """The float32 peak of this CPU: lanes per FMA × 2 FMA units × 2 FLOP × cores × clock.

    Lanes come from the widest vector flag (avx512f → 16 float32, avx2/fma → 8, else SSE 4).
    Two FMA units per core is assumed (true of Intel server cores with AVX-512 and of AMD Zen).
    AMD Zen 4 (family 25) runs AVX-512 on 256-bit datapaths (each 512-bit op takes two), so
    its peak per cycle is the AVX2 one: 8 lanes. The clock is /sys's maximum frequency when
    the kernel exposes it, else cpuinfo's MHz (a VM reports its nominal clock; turbo is not
    counted). Also lists the reduced-precision features the issue asks about.
    """
    if cpuinfo is None:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    if max_freq_khz is None:
        freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        max_freq_khz = int(freq.read_text()) if freq.is_file() else None
    info = parse_cpuinfo(cpuinfo)
    flags: set[str] = info["flags"]
    n_cores = cores or info["processors"] or 1
    if "avx512f" in flags:
        lanes, isa = 16, "avx512f"
    elif "avx2" in flags or "fma" in flags:
        lanes, isa = 8, "avx2/fma"
    else:
        lanes, isa = 4, "sse"
    datapath_note = ""
    if lanes == 16 and info["vendor"] == "AuthenticAMD" and info["family"] == 25:
        lanes = 8
        datapath_note = " (AMD Zen 4: AVX-512 double-pumped on 256-bit units, so 8 lanes/cycle)"
    fma_units = 2 if "fma" in flags or "avx512f" in flags else 1
    ghz = max_freq_khz / 1e6 if max_freq_khz else (info["mhz"] or 0.0) / 1e3
    clock_source = "/sys cpuinfo_max_freq" if max_freq_khz else "/proc/cpuinfo cpu MHz"
    flop_per_cycle = lanes * fma_units * 2
    peak = flop_per_cycle * n_cores * ghz
    return {
        "model_name": info["model_name"],
        "vendor": info["vendor"],
        "cores": n_cores,
        "ghz": round(ghz, 3),
        "isa": isa,
        "float32_lanes": lanes,
        "fma_units": fma_units,
        "flop_per_cycle_per_core": flop_per_cycle,
        "peak_gflops": round(peak, 1),
        "assumption": (
            f"{isa}: {lanes} float32 lanes{datapath_note} × {fma_units} FMA units (assumed) × "
            f"2 FLOP per FMA × {n_cores} cores × {ghz:.2f} GHz ({clock_source}, no turbo)"
        ),
        "reduced_precision": {
            "avx512_bf16": "avx512_bf16" in flags,
            "avx512_vnni": "avx512_vnni" in flags,
            "avx_vnni": "avx_vnni" in flags,
            "amx": sorted(f for f in flags if f.startswith("amx")),
        },
    }


def ceiling_report(flops: int, images_per_s: float, peak: dict[str, Any]) -> dict[str, Any]:
    """The bench's four ceiling fields from a model's FLOPs, its measured rate and the peak."""
    achieved = flops * images_per_s / 1e9
    return {
        "flops_per_image": flops,
        "achieved_gflops": round(achieved, 1),
        "cpu_peak_gflops": peak["peak_gflops"],
        "peak_fraction": round(achieved / peak["peak_gflops"], 3) if peak["peak_gflops"] else None,
    }
