"""What reduced precision costs in answers (issue 13): for each (runtime, precision), the offline default's
TrustVLM evaluation on Fashion-MNIST (the real ``trustserve eval`` code: 16-shot prototypes, 3 support draws,
``--test-limit`` test images), its top-1 agreement with torch fp32 and the change in AUROC.

int8 is calibrated on 300 Fashion-MNIST *train* images (never test). Encodings are cached per runtime and
precision in ``--cache-dir``.

    python -m benchmarks.runtime.quality --test-limit 1000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from app.runtime.machine import cpu_supports_bf16
from app.trust.eval_config import EvalConfig
from app.trust.evaluation import run_evaluation
from benchmarks.runtime.calibration_images import write_calibration_images

CONFIGS = [
    ("torch", "fp32"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
]
SCORES = ("msp", "trustvlm", "trustvlm_star")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="offline-conse")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--skip-torch",
        action="store_true",
        help="use onnxruntime fp32 as the reference (tests/vlm/test_runtime_parity_fashion_mnist.py shows it "
        "gives torch's top-1 and decisions); saves the slow torch encode on a loaded machine",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "trustserve-bench-quality"
    )
    parser.add_argument("--export-cache-dir", type=Path, default=None, help="default: CACHE_DIR/export")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quality.json")
    args = parser.parse_args()
    os.environ["TRUSTSERVE_RUNTIME_THREADS"] = str(args.threads)
    os.environ["TRUSTSERVE_EXPORT_CACHE_DIR"] = str(args.export_cache_dir or args.cache_dir / "export")
    calibration = write_calibration_images(args.cache_dir / "calibration-fmnist")
    rows, reference = [], None
    for runtime, precision in CONFIGS:
        if (precision == "bf16" and not cpu_supports_bf16()) or (args.skip_torch and runtime == "torch"):
            continue
        config = EvalConfig(
            model=args.preset,
            dataset=args.dataset,
            shots=(16,),
            draws=args.draws,
            test_limit=args.test_limit,
            device="cpu",
            runtime=runtime,
            precision=precision,
            calibration_dir=calibration,
            cache_dir=args.cache_dir / "encodings",
        )
        result = run_evaluation(config)
        prediction = np.asarray(result.samples["prediction"])
        scores = result.summary["results"]["16"]["scores"]
        auroc = {s: scores[s]["mean"]["auroc"] for s in SCORES if s in scores}
        if reference is None:
            reference = (prediction, auroc)
        rows.append(
            {
                "reference": f"{rows[0]['runtime']}/fp32" if rows else f"{runtime}/{precision}",
                "runtime": runtime,
                "precision": precision,
                "n_test": len(prediction),
                "zero_shot_accuracy": result.summary["zero_shot_accuracy"],
                "top1_agreement_with_reference": float((prediction == reference[0]).mean()),
                "auroc": auroc,
                "auroc_change_vs_reference": {s: auroc[s] - reference[1][s] for s in auroc},
                "encode_s": result.summary["timing_s"]["encode"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"load_average": os.getloadavg(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
