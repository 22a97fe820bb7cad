"""Training cost of every registered architecture: seconds per image at 128x128, fp32 and bf16.

    python bench/arch_cost.py [--threads 2] [--batch 32]

``training.engine.training_step`` (channels-last, forward + backward + AdamW step, the loop's
own step) on random 1-channel batches, after two warm-up steps, in fp32 and in mixed bf16. The
figure ``training.recipe`` uses (``ModelInfo.cost_128``) is derived from the fp32 step at 128 px on
the reference machine (2 CPU cores, idle) as printed in the last column: (step +
``recipe.OVERHEAD_S``) x ``recipe.MARGIN``; where training runs in bf16 the recipe scales the
network's share by the speed-up its own probe measures (``recipe.scaled_cost``). The overhead is
the training loop's per-image work outside the network (augmentation, batching, the validation
pass each epoch), the same for every architecture; the margin keeps the budget rule from
overshooting on a busy machine. Both were set from default runs of ``linecnn`` (wall time per
image pass at 128 px, 8-9 ms, against its then 5.8 ms step), and the naive ResNet-18 baseline of
``bench/train_quality.py`` lands where they predict (23.6 ms per pass wall, 22.5 ms step, no
augmentation). The machine is shared: the script alternates architectures over several rounds
and prints the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch

    from training.engine import step_seconds
    from training.models import Classifier, get_model, list_models, model_info
    from training.recipe import MARGIN, OVERHEAD_S, scaled_cost

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--only", nargs="+", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only or list_models()
    times: dict[tuple[str, int, str], list[float]] = {}
    models = {n: Classifier(get_model(n, num_classes=2, in_channels=1), mean=[0.5], std=[0.25]) for n in names}
    for _ in range(args.rounds):
        for size in args.sizes:
            for name, model in models.items():
                for precision in ("fp32", "bf16"):
                    times.setdefault((name, size, precision), []).append(
                        step_seconds(model, (1, size, size), precision=precision, batch=args.batch)
                    )
    for name in names:
        for size in args.sizes:
            fp32 = statistics.median(times[(name, size, "fp32")])
            bf16 = statistics.median(times[(name, size, "bf16")])
            cost = (fp32 + OVERHEAD_S) * MARGIN
            print(
                f"{name:20s} {size:4d} px  fp32 {fp32 * 1000:7.2f} ms/image  bf16 {bf16 * 1000:7.2f} ms/image "
                f"({fp32 / bf16:.2f}x)  registered cost_128 {model_info(name).cost_128 * 1000:.1f} ms; this fp32 "
                f"step suggests {cost * 1000:.1f} ms (bf16 here: {scaled_cost(cost, bf16 / fp32) * 1000:.1f} ms)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
