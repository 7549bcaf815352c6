"""Built-in detector: images/s for fit and predict, and AUROCs on the demo set, per method,
backbone and device. The baseline is a randomly initialised timm CNN (the other way to get
features without downloading weights), measured in the same run beside the offline filter bank.

    python benchmarks/detection.py                 # default demo set (256 px), CPU and GPU if present
    python benchmarks/detection.py --quick         # small set, for a first look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.commands.detect import detection_aurocs  # noqa: E402
from core.dataset import load_dataset  # noqa: E402
from core.demo import generate_demo  # noqa: E402
from core.detection import DetectorConfig, detect  # noqa: E402
from core.records import Manifest  # noqa: E402


def _measure(manifest: Manifest, config: DetectorConfig, device: torch.device) -> dict[str, float]:
    if config.method == "zero-shot":  # the unsupervised setting: no normal images at all
        manifest = Manifest(manifest.root, manifest.layout, manifest.unlabeled)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    detection = detect(manifest, config, device)
    total = time.perf_counter() - started
    fit_images = len(manifest.normal) if config.method == "patchcore" else len(manifest.images)
    aurocs = detection_aurocs(manifest, detection.maps)
    return {
        "fit_ips": fit_images / max(detection.timings.get("fit", 0.0), 1e-9),
        "predict_ips": len(detection.maps) / max(detection.timings.get("predict", 0.0), 1e-9),
        "total_s": total,
        **aurocs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="160 px demo, 20 normal, 4 per class")
    parser.add_argument("--image-size", type=int, default=224, help="feature input size [224]")
    parser.add_argument("--devices", default="auto", help="comma list: cpu,cuda; auto = cpu and cuda if present")
    parser.add_argument("--methods", default="patchcore,zero-shot")
    parser.add_argument("--backbones", default="filterbank,resnet18", help="resnet18 runs randomly initialised")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else args.devices.split(",")
    demo = dict(image_size=160, n_train_good=20, n_test_good=8, n_per_class=4) if args.quick else {}

    with tempfile.TemporaryDirectory() as folder:
        root = generate_demo(Path(folder) / "demo", seed=0, **demo)
        manifest = load_dataset(root)
        print(f"demo set: {len(manifest.normal)} normal, {len(manifest.unlabeled)} to inspect "
              f"({sum(r.gt_class != 'good' for r in manifest.unlabeled)} defective); feature input {args.image_size} px; "
              f"torch threads {torch.get_num_threads()}")
        header = f"{'method':10s} {'backbone':18s} {'device':6s} {'fit img/s':>10s} {'pred img/s':>10s} {'total s':>8s} {'image AUROC':>11s} {'pixel AUROC':>11s}"
        print(header)
        print("-" * len(header))
        for method in args.methods.split(","):
            for backbone in args.backbones.split(","):
                config = DetectorConfig(method=method, backbone=backbone, pretrained=False, image_size=args.image_size,
                                        embed_dim=1024)
                label = backbone if backbone == "filterbank" else f"{backbone} (random)"
                for name in devices:
                    row = _measure(manifest, config, torch.device(name))
                    print(f"{method:10s} {label:18s} {name:6s} {row['fit_ips']:10.1f} {row['predict_ips']:10.1f} "
                          f"{row['total_s']:8.1f} {row['image_auroc']:11.3f} {row['pixel_auroc']:11.3f}", flush=True)


if __name__ == "__main__":
    main()
