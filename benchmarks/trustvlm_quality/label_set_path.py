"""Issue 14's targets through the label-set path: the real engine and ``LabelSetService`` (support images
→ leave-one-out selection, calibrate → anchored selection on half the calibration images + threshold on
the other half), then the test images scored exactly as ``/v1/classify`` scores them
(``LabelSetView.score`` under the label set's policy, in its image space).

Per support draw: a label set with ``preprocess``, ``image_space`` and ``selection`` as given, K support
images per class
from ``train``, calibration images from the rest of ``train`` (disjoint), the test split measured against
MSP. Prints the chosen policy / α / evidence and ΔAUROC and E-AURC / MSP per draw and on average.

    OMP_NUM_THREADS=1 python benchmarks/trustvlm_quality/label_set_path.py \\
        --dataset imagefolder:/tmp/i14/emoji-wide --shots 8 --draws 3 --calib-size 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.config import Settings
from app.engine.engine import ClassificationEngine
from app.labelsets.calibration import CalibrationRequest
from app.labelsets.service import LabelSetService
from app.labelsets.store import DirectoryStore
from app.trust.datasets import load_dataset
from app.trust.metrics import auroc, eaurc
from app.trust.prototypes import draw_support_indices

LABEL_SET = "bench"


async def one_draw(
    engine: ClassificationEngine, args: argparse.Namespace, draw: int
) -> dict[str, float | str]:
    train = load_dataset(args.dataset, "train")
    test = load_dataset(args.dataset, "test", limit=args.test_limit, seed=0)
    support_idx = draw_support_indices(train.labels, args.shots, seed=draw)
    rest = np.setdiff1d(np.arange(len(train)), support_idx)
    calib_idx = np.sort(np.random.default_rng(100 + draw).permutation(rest)[: args.calib_size])
    names = train.class_names
    with tempfile.TemporaryDirectory() as store:
        settings = engine.settings
        service = LabelSetService(DirectoryStore(Path(store)), engine, settings)
        await service.repository.load_all()
        await service.repository.create(
            LABEL_SET,
            names,
            preprocess=args.preprocess,
            image_space=args.image_space,
            selection_mode=args.selection,
            trust_score="trustvlm",
        )
        for start in tqdm(range(0, support_idx.size, 64), desc=f"draw {draw} support", leave=False):
            part = support_idx[start : start + 64]
            await service.support.add(
                LABEL_SET, [names[train.labels[i]] for i in part], [train.images[int(i)] for i in part]
            )
        after_support = service.repository.get_meta(LABEL_SET)
        request = CalibrationRequest(rule="target_coverage", target_coverage=0.8, seed=draw)
        view = await service.calibration.calibrate(
            LABEL_SET,
            [names[train.labels[i]] for i in calib_idx],
            [train.images[int(i)] for i in calib_idx],
            request,
        )
        await service.stop()
    images = [test.images[i] for i in range(len(test))]
    encoded = await engine.encode_images(images, policy=view.policy, spaces=(view.space,))
    scored = view.score(
        encoded.embeddings,
        encoded.features_in(view.space),
        logit_scale=engine.logit_scale,
        logit_bias=engine.logit_bias,
    )
    correct = (scored.predictions == test.labels).astype(np.int64)
    msp, fused = scored.scores["msp"], scored.scores["trustvlm"]
    assert view.calibration is not None and view.calibration.selection is not None
    return {
        "support_policy": after_support.policy,
        "support_alpha": after_support.alpha,
        "support_space": after_support.space,
        "space": view.space,
        "policy": view.policy,
        "alpha": view.alpha,
        "evidence": view.selection_evidence,
        "accuracy": float(correct.mean()),
        "delta_auroc": 100 * (auroc(fused, correct) - auroc(msp, correct)),  # type: ignore[operator]
        "eaurc_ratio": eaurc(fused, correct) / eaurc(msp, correct),  # type: ignore[operator]
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="offline-conse")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--calib-size", type=int, default=200)
    parser.add_argument("--preprocess", default="auto", choices=["crop", "letterbox", "auto"])
    parser.add_argument("--selection", default="auto", choices=["auto", "fixed"])
    parser.add_argument("--image-space", default="auto", choices=["own", "independent", "auto"])
    parser.add_argument("--test-limit", type=int, default=None, help="class-balanced test subset (seed 0)")
    parser.add_argument("--runtime", default="onnxruntime")
    args = parser.parse_args()
    print(f"start {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as store:
        settings = Settings(model=args.model, store_dir=Path(store), warmup=False, runtime=args.runtime)
        engine = await asyncio.to_thread(ClassificationEngine.load, settings)
        await engine.start()
        try:
            rows = [await one_draw(engine, args, d) for d in range(args.draws)]
        finally:
            await engine.stop()
    for d, row in enumerate(rows):
        print(
            f"draw {d}: after support {row['support_policy']} {row['support_space']} "
            f"α={row['support_alpha']:g}; after calibrate {row['policy']} {row['space']} α={row['alpha']:g} "
            f"({row['evidence']}); zero-shot acc "
            f"{100 * float(row['accuracy']):.1f} %; ΔAUROC {float(row['delta_auroc']):+.2f}; "
            f"E-AURC {float(row['eaurc_ratio']):.2f}× MSP"
        )
    delta = np.array([float(r["delta_auroc"]) for r in rows])
    ratio = np.array([float(r["eaurc_ratio"]) for r in rows])
    ddof = 1 if len(rows) > 1 else 0
    print(
        f"mean ± sample std over {len(rows)} draws: ΔAUROC {delta.mean():+.2f} ± {delta.std(ddof=ddof):.2f}, "
        f"E-AURC {ratio.mean():.2f} ± {ratio.std(ddof=ddof):.2f}× MSP"
    )
    print(f"end {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
