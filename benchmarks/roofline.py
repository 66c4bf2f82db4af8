"""How close ResNet50 feature extraction gets to this machine's matrix-multiply roof.

achieved FLOP/s = (ResNet50 images per second through KerasFeatureExtractor) x (FLOPs per
image, counted from the layers: 2 x multiply-adds of every convolution and dense layer);
roof = the best float32 matrix-multiply throughput measured in the same run (TensorFlow at
2048 and 3072, NumPy at 3072, square matrices). The matrix products and the model take turns
in every round and each keeps its best round, so background load cannot skew the ratio.
The bfloat16 figure is reported beside it, against both the float32 roof and a bfloat16
matmul roof, and, where the openvino package is installed, the float32 figure of
``runtime="openvino"`` (the same extractor, its network run by OpenVINO's CPU plugin).

    python benchmarks/roofline.py [--quick] [--n-images 64] [--batch-size N] [--repeats 5]

The batch size is the extractor's default (8 on a CPU) unless given.

Target: >= 0.9 of the roof in float32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from harness import emit, interleaved_best, machine


def layer_flops(model) -> int:
    """2 x multiply-accumulates of the convolutions and dense layers of a Keras model."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.Model):
            continue
        out_shape = getattr(layer, "output", None)
        if out_shape is None:
            continue
        out_shape = tuple(out_shape.shape)
        spatial = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += 2 * spatial * kh * kw * out_shape[-1]
        elif isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            c_in = layer.depthwise_kernel.shape[2]
            total += 2 * spatial * (kh * kw * c_in * layer.depth_multiplier
                                    + c_in * layer.depth_multiplier * out_shape[-1])
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            c_in = layer.kernel.shape[2]
            total += 2 * spatial * kh * kw * c_in * out_shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * spatial * layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


def matmul_timers(sizes: tuple[int, ...]) -> dict[str, tuple[float, object]]:
    """Square matrix products to time: name -> (FLOPs, zero-argument callable).

    TensorFlow float32 at every size, NumPy float32 at the largest, TensorFlow bfloat16 at
    the largest. The roof is the best of the float32 ones: the strictest reference.
    """
    import tensorflow as tf

    timers = {}
    for n in sizes:
        a = tf.random.uniform((n, n), dtype=tf.float32)
        b = tf.random.uniform((n, n), dtype=tf.float32)
        matmul = tf.function(lambda x, y: tf.linalg.matmul(x, y))
        matmul(a, b).numpy()
        timers[f"tf_float32_{n}"] = (2 * n**3, lambda m=matmul, x=a, y=b: m(x, y).numpy())
    n = max(sizes)
    x = np.asarray(a)
    y = np.asarray(b)
    timers[f"numpy_float32_{n}"] = (2 * n**3, lambda: x @ y)
    a16, b16 = tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16)
    matmul16 = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    matmul16(a16, b16).numpy()
    timers[f"tf_bfloat16_{n}"] = (2 * n**3, lambda: matmul16(a16, b16).numpy())
    return timers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for smoke tests")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    n_images, repeats, size, matrices = (
        (8, 1, 96, (512,)) if args.quick
        else (args.n_images, args.repeats, 224, (2048, 3072))
    )

    from transferkit import KerasFeatureExtractor
    from transferkit.keras_setup import default_batch_size
    from transferkit.openvino_runtime import openvino_available

    batch_size = args.batch_size or default_batch_size()
    images = np.random.default_rng(0).integers(0, 256, (n_images, size, size, 3), np.uint8)

    matmuls = matmul_timers(matrices)
    flops = {name: f for name, (f, _) in matmuls.items()}
    fns = {name: fn for name, (_, fn) in matmuls.items()}
    variants = {"float32": {"precision": "float32"}, "bfloat16": {"precision": "bfloat16"}}
    if openvino_available():
        variants["openvino_float32"] = {"runtime": "openvino"}
    for name, params in variants.items():
        extractor = KerasFeatureExtractor("ResNet50", weights=None, random_state=0,
                                          input_size=size, cache=None,
                                          batch_size=batch_size, **params).fit()
        flops[name] = layer_flops(extractor.model_) * n_images
        extractor.transform(images[:batch_size])
        fns[name] = lambda e=extractor: e.transform(images)
    # Matmuls and the model take turns in every round, so a neighbour that slows the
    # machine for a while cannot lower the roof alone (or the model alone).
    seconds = interleaved_best(fns, repeats)
    gflops = {name: flops[name] / seconds[name] / 1e9 for name in fns}
    roof32 = max(v for k, v in gflops.items() if "float32_" in k)
    roof16 = gflops[f"tf_bfloat16_{max(matrices)}"]
    achieved = {p: {"images_per_s": n_images / seconds[p], "gflops": gflops[p],
                    "gflops_per_image": flops[p] / n_images / 1e9}
                for p in variants}
    roofs = {f"{k}_gflops": v for k, v in gflops.items() if k not in achieved}

    report = {
        "benchmark": "roofline",
        "quick": args.quick,
        "backbone": "ResNet50",
        "input_size": size,
        "images": n_images,
        "rounds": repeats,
        "batch_size": batch_size,
        "gflops_per_image": round(achieved["float32"]["gflops_per_image"], 3),
        "roof_float32_gflops": round(roof32, 1),
        **{k: round(v, 1) for k, v in roofs.items()},
        "float32_images_per_s": round(achieved["float32"]["images_per_s"], 2),
        "float32_gflops": round(achieved["float32"]["gflops"], 1),
        "float32_fraction_of_roof": round(achieved["float32"]["gflops"] / roof32, 3),
        "bfloat16_images_per_s": round(achieved["bfloat16"]["images_per_s"], 2),
        "bfloat16_gflops": round(achieved["bfloat16"]["gflops"], 1),
        "bfloat16_fraction_of_float32_roof": round(achieved["bfloat16"]["gflops"] / roof32, 3),
        "bfloat16_fraction_of_bfloat16_roof": round(
            achieved["bfloat16"]["gflops"] / roof16, 3),
        **({
            "openvino_float32_images_per_s": round(
                achieved["openvino_float32"]["images_per_s"], 2),
            "openvino_float32_gflops": round(achieved["openvino_float32"]["gflops"], 1),
            "openvino_float32_fraction_of_roof": round(
                achieved["openvino_float32"]["gflops"] / roof32, 3),
        } if "openvino_float32" in achieved else {"openvino_float32": "openvino not installed"}),
        "target": {"float32_fraction_of_roof": 0.9},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine(),
    }
    emit(report)
    return report


if __name__ == "__main__":
    main()
