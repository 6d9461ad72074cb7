"""The inference ceiling: FLOPs counted from the layers, the CPU's float32 peak from
/proc/cpuinfo text, and `digits models speed` comparing faster paths with float32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model_store.ceiling import inference_path
from model_store.flops import ceiling_report, cpu_peak, flops_per_image
from tests.conftest import KAGGLE_TRAIN, SAMPLE, digits_cli


def tiny_model(name: str = "tiny") -> Any:
    import keras

    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inp)  # → 6×6×4
    x = keras.layers.DepthwiseConv2D(3)(x)  # → 4×4×4
    x = keras.layers.Flatten()(x)  # 64
    return keras.Model(inp, keras.layers.Dense(10)(x), name=name)


def test_flops_of_a_tiny_model_match_a_hand_count() -> None:
    """Conv 6·6·4 positions × 3·3·1 = 1,296 MACs; depthwise 4·4·4 × 3·3 = 576; Dense 64 × 10
    = 640: 2,512 MACs, 5,024 FLOPs. An ensemble of two costs twice that."""
    import keras

    member = tiny_model()
    assert flops_per_image(member) == 2 * (6 * 6 * 4 * 9 + 4 * 4 * 4 * 9 + 64 * 10)
    inp = keras.Input((8, 8, 1))
    members = [tiny_model(f"member_{i}") for i in (1, 2)]
    ensemble = keras.Model(inp, keras.layers.Average()([m(inp) for m in members]))
    assert flops_per_image(ensemble) == 2 * flops_per_image(member)


def test_bundled_v4_costs_the_issues_60_7_mflop() -> None:
    from model_store.loading import load
    from model_store.registry import get_version

    assert flops_per_image(load(get_version(4))) == pytest.approx(60.7e6, rel=0.01)


def cpuinfo(vendor: str, family: int, flags: str, mhz: str = "2600.000", cpus: int = 2) -> str:
    block = (
        f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel name\t: test cpu\n"
        f"cpu MHz\t\t: {mhz}\nflags\t\t: fpu sse sse2 {flags}\n"
    )
    return "\n".join(f"processor\t: {i}\n{block}" for i in range(cpus))


@pytest.mark.parametrize(
    ("vendor", "family", "flags", "lanes", "isa"),
    [
        ("GenuineIntel", 6, "fma avx2 avx512f avx512_vnni amx_tile amx_bf16", 16, "avx512f"),
        ("AuthenticAMD", 25, "fma avx2 avx512f avx512_bf16 avx512_vnni", 8, "avx512f"),  # Zen 4
        ("AuthenticAMD", 23, "fma avx2", 8, "avx2/fma"),
        ("GenuineIntel", 6, "", 4, "sse"),
    ],
)
def test_cpu_peak_from_cpuinfo_text(
    vendor: str, family: int, flags: str, lanes: int, isa: str
) -> None:
    peak = cpu_peak(cpuinfo(vendor, family, flags), max_freq_khz=None)
    fma = 2 if "fma" in flags else 1
    assert (peak["isa"], peak["float32_lanes"], peak["fma_units"]) == (isa, lanes, fma)
    assert peak["cores"] == 2 and peak["ghz"] == 2.6
    assert peak["peak_gflops"] == pytest.approx(lanes * fma * 2 * 2 * 2.6, abs=0.1)
    assert f"{lanes} float32 lanes" in peak["assumption"]
    rp = peak["reduced_precision"]
    assert rp["avx512_vnni"] == ("avx512_vnni" in flags)
    assert rp["avx512_bf16"] == ("avx512_bf16" in flags)
    assert rp["amx"] == sorted(f for f in flags.split() if f.startswith("amx"))


def test_cpu_peak_prefers_the_kernels_max_frequency() -> None:
    peak = cpu_peak(cpuinfo("GenuineIntel", 6, "fma avx2"), max_freq_khz=3_500_000, cores=1)
    assert peak["ghz"] == 3.5 and peak["peak_gflops"] == 8 * 2 * 2 * 3.5
    assert "cpuinfo_max_freq" in peak["assumption"]


def test_ceiling_report_is_flops_times_rate_over_peak() -> None:
    report = ceiling_report(60_000_000, 2_000.0, {"peak_gflops": 240.0})
    assert report == {
        "flops_per_image": 60_000_000,
        "achieved_gflops": 120.0,
        "cpu_peak_gflops": 240.0,
        "peak_fraction": 0.5,
    }


STORED = {"labels_changed": 0, "file": "model.int8.tflite", "sha256": "0" * 64}


@pytest.mark.parametrize(
    ("checked", "wanted", "used"),
    [
        ({}, "float32", "float32"),
        ({}, "tflite-int8-dynamic", "float32"),  # not checked for this version: float32
        ({"tflite-int8-dynamic": STORED}, "tflite-int8-dynamic", "tflite-int8-dynamic"),
        ({"tflite-int8-dynamic": STORED}, "float32", "float32"),
        # checked, but no stored artefact: workers would convert at every load, so float32
        ({"tflite-int8-dynamic": {"labels_changed": 0}}, "tflite-int8-dynamic", "float32"),
    ],
)
def test_a_path_is_used_only_for_a_version_whose_card_checked_it(
    checked: dict[str, Any], wanted: str, used: str
) -> None:
    assert inference_path({"inference_paths": checked}, wanted) == used


def test_the_bundled_card_checked_the_path_it_allows() -> None:
    """The v4 card's record for the int8 path meets the bar a path must pass to ship."""
    from model_store.ceiling import ECE_TOLERANCE, MAX_LABELS_CHANGED, NLL_TOLERANCE
    from model_store.registry import get_version

    card = get_version(4).card
    for m in card["inference_paths"].values():
        assert m["rows"] == card["validation_split"]["rows"]
        assert m["labels_changed"] <= MAX_LABELS_CHANGED
        assert m["ece"] <= m["float32_ece"] + ECE_TOLERANCE
        assert m["nll"] <= m["float32_nll"] + NLL_TOLERANCE


@pytest.mark.slow
@pytest.mark.skipif(not KAGGLE_TRAIN.is_file(), reason="needs Kaggle's train.csv.gz")
def test_models_speed_compares_paths_on_a_slice(home: Path) -> None:
    out = digits_cli(
        "models", "speed", "4", "--data", str(KAGGLE_TRAIN), "--limit", "300",
        "--paths", "bfloat16,tflite-int8-dynamic", "--repeats", "1", "--batch", "100",
        "--threads", "1", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert (result["rows"], result["batch_size"], result["threads"]) == (300, 100, 1)
    rows = {row["path"]: row for row in result["paths"]}
    assert list(rows) == ["float32", "bfloat16", "tflite-int8-dynamic"]
    assert rows["tflite-int8-dynamic"]["source"] == "stored model.int8.tflite"
    assert rows["float32"]["labels_changed"] == 0 and rows["float32"]["speedup"] == 1.0
    for row in rows.values():
        assert "error" not in row, row
        assert row["images_per_s"] > 0 and 0 <= row["labels_changed"] <= 300
        assert row["achieved_gflops"] == pytest.approx(
            result["flops_per_image"] * row["images_per_s"] / 1e9, abs=0.1
        )
    assert not rows["float32"]["qualifies"]


@pytest.mark.slow
@pytest.mark.skipif(not KAGGLE_TRAIN.is_file(), reason="needs Kaggle's train.csv.gz")
def test_speed_record_stores_the_int8_artefact_workers_load(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--record` on a registered copy of v4 (register keeps only model.keras) converts,
    measures, and stores model.int8.tflite with its sha256 on the card: the file the loader
    then accepts, and the path workers then choose."""
    from model_store.inference import chosen_path
    from model_store.loading import load_tflite
    from model_store.registry import INT8_FILE, default_version, get_version, register, sha256_file

    bundled = default_version()
    copy = register(bundled.model_file, dict(bundled.card))
    assert copy.artefact("tflite-int8-dynamic") is None
    out = digits_cli(
        "models", "speed", str(copy.version), "--data", str(KAGGLE_TRAIN), "--limit", "300",
        "--paths", "tflite-int8-dynamic", "--repeats", "1", "--batch", "100", "--threads", "1",
        "--record", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    [row] = [r for r in json.loads(out.stdout)["paths"] if r["path"] == "tflite-int8-dynamic"]
    assert row["source"] == "converted now" and row["qualifies"]
    version = get_version(copy.version)
    entry = version.card["inference_paths"]["tflite-int8-dynamic"]
    assert entry["file"] == INT8_FILE and entry["rows"] == 300
    assert entry["labels_changed"] == row["labels_changed"]
    assert entry["sha256"] == sha256_file(version.path / INT8_FILE)
    model = load_tflite(version, "tflite-int8-dynamic", threads=1)
    assert tuple(model.output_shape[1:]) == (10,)
    from digits.core.settings import get_settings

    monkeypatch.setenv("DIGITS_INFERENCE_PATH", "tflite-int8-dynamic")
    get_settings.cache_clear()
    assert chosen_path(version) == "tflite-int8-dynamic"


def tie_model(path: Path) -> Path:
    """A model whose int8 weights cannot tell its classes apart, saved to ``path``: every
    weight is 1.0 plus a difference of at most 1e-4, far below int8's step (1/127 of the
    largest weight), so float32's labels follow the differences while every int8 column rounds
    to the same 127 and every int8 row ties (label 0). Deterministic: no training, fixed
    weights, and quantization has no randomness."""
    import keras
    import numpy as np

    inp = keras.Input((28, 28, 1))
    dense = keras.layers.Dense(10, use_bias=False, activation="softmax")
    model = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    differences = np.random.default_rng(0).uniform(-1, 1, (784, 10)).astype(np.float32)
    dense.set_weights([1.0 + 1e-4 * differences])
    model.save(path)
    return path


def test_a_new_version_whose_int8_form_moves_labels_is_refused_with_the_reason(
    home: Path, tmp_path: Path
) -> None:
    """`digits train`'s last step (``check_new_version``) on a version whose int8 conversion
    moves labels: nothing is stored, the card says why, workers run float32, and `models show`
    prints the refusal. Before this test the refusal branch ran only when a conversion
    happened to fail the bar."""
    from model_store.ceiling import MAX_LABELS_CHANGED, check_new_version
    from model_store.inference import chosen_path
    from model_store.registry import INT8_FILE, default_version, get_version, register

    version = register(tie_model(tmp_path / "tie.keras"), dict(default_version().card))
    entry = check_new_version(version.version, SAMPLE, 100, "digits train (test)")
    assert "file" not in entry and entry["command"] == "digits train (test)"
    changed = int(entry["refused"].split(" labels changed")[0])
    assert changed > MAX_LABELS_CHANGED, entry
    meta = get_version(version.version)
    assert not (meta.path / INT8_FILE).exists()
    assert meta.artefact("tflite-int8-dynamic") is None
    assert chosen_path(meta) == "float32"
    shown = digits_cli("models", "show", str(version.version))
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"tflite-int8-dynamic refused on {entry['measured_at']}: {changed} labels changed" in (
        shown.stdout
    )
