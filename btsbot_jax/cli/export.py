"""`btsbot-export --checkpoint=CKPT --format=stablehlo|onnx|savedmodel|all|onnx_int8 --out=DIR`.

CKPT is a model directory or a training workdir (its best/ checkpoint). For a BTSbot v2 model the ONNX has upstream's
signature (`image` (N,3,63,63), `metadata` -> `logits`, what BOOM loads) and `all` writes stablehlo + onnx.
Every export is checked against the Flax model before it is written; the measured max difference is printed and
recorded in DIR/model_card.json.
onnx_int8 is calibrated on a simulated survey and the packets under --calibration_packets, and checked by the
fraction of decisions at 0.5 identical to float32 on held-out inputs (see docs/int8.md).
"""

from absl import flags

from btsbot_jax.cli import UsageError, run

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Model directory (model_card.json + state/) or training workdir.")
flags.DEFINE_enum("format", "all", ["stablehlo", "onnx", "savedmodel", "all", "onnx_int8"], "Export format.")
flags.DEFINE_string("out", None, "Output directory (must not exist or be empty, unless --overwrite).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out directory.")
flags.DEFINE_list("platforms", ["cpu", "cuda"], "StableHLO lowering platforms (cpu, cuda, rocm, tpu).")
flags.DEFINE_list("calibration_packets", [], "onnx_int8: alert packets (avro files/folders) to calibrate on and check "
                  "against, besides the simulated survey.")
flags.DEFINE_integer("calibration_sim_sources", 60, "onnx_int8: sources of the simulated calibration survey.")


def _main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    from btsbot_jax.inference.export import export_model

    card = export_model(FLAGS.checkpoint, FLAGS.out, FLAGS.format, overwrite=FLAGS.overwrite,
                        platforms=FLAGS.platforms,
                        int8_options={"real_paths": FLAGS.calibration_packets,
                                      "sim_sources": FLAGS.calibration_sim_sources})
    ver = card["verification"]
    if FLAGS.format == "onnx_int8":
        q = card["quantization"]
        print(f"exported {card['architecture']} {card['version']} from {FLAGS.checkpoint} -> {FLAGS.out} (int8, "
              f"{q['name']})\n  decisions at 0.5 identical to float32 on {ver['identical_decisions']:.2%} of "
              f"{ver['n_holdout']} held-out inputs, max |int8 - float32| = {ver['max_abs_diff']:.3f}")
        return
    checks = ver.items() if FLAGS.format == "all" else [(FLAGS.format, ver)]
    print(f"exported {card['architecture']} {card['version']} from {FLAGS.checkpoint} -> {FLAGS.out}")
    for fmt, v in checks:
        print(f"  {fmt:10s} max|export - flax| = {v['max_abs_diff']:.2e} on {v['n_probe']} probe inputs "
              f"({v['runtime']})")


def main():
    run(_main, required=["checkpoint", "out"], paths=["checkpoint", "out"])


if __name__ == "__main__":
    main()
