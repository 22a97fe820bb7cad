"""Training cost of every registered architecture: seconds per image at 128x128 (and 192x192).

    python bench/arch_cost.py [--threads 2] [--batch 32]

Forward + backward + AdamW step on random 1-channel batches, after two warm-up steps. The
figure ``training.recipe`` uses (``ModelInfo.cost_128``) is derived from the 128 px step on the
reference machine (2 CPU cores, idle) as printed in the last column: (step + ``OVERHEAD_S``)
x ``MARGIN``. The overhead is the training loop's per-image work outside the network
(augmentation, batching, the validation pass each epoch), the same for every architecture; the
margin keeps the budget rule from overshooting on a busy machine. Both were set from default
runs of ``linecnn`` (wall time per image pass at 128 px, 8-9 ms, against its 5.8 ms step), and
the naive ResNet-18 baseline of ``bench/train_quality.py`` lands where they predict (23.6 ms per
pass wall, 22.5 ms step, no augmentation). The machine is shared: the script alternates
architectures over several rounds and prints the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


#: Per-image work of the training loop outside the network, seconds (see the docstring).
OVERHEAD_S = 0.003
#: Safety factor on the sum (a busy machine, slower memory): the budget is a promise.
MARGIN = 1.25


def main() -> int:
    import torch

    from training.models import get_model, list_models, model_info

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--only", nargs="+", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only or list_models()
    times: dict[tuple[str, int], list[float]] = {}
    models = {n: get_model(n, num_classes=2, in_channels=1) for n in names}
    for _ in range(args.rounds):
        for size in args.sizes:
            for name, model in models.items():
                model.train()
                opt = torch.optim.AdamW(model.parameters())
                x = torch.randn(args.batch, 1, size, size)
                y = torch.randint(0, 2, (args.batch,))
                for i in range(5):
                    if i == 2:
                        start = time.perf_counter()
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                times.setdefault((name, size), []).append((time.perf_counter() - start) / (3 * args.batch))
    for (name, size), ts in times.items():
        step = statistics.median(ts)
        print(
            f"{name:20s} {size:4d} px  {step * 1000:7.2f} ms/image  (registered cost_128 "
            f"{model_info(name).cost_128 * 1000:.1f} ms; at 128 px this step suggests "
            f"{(step + OVERHEAD_S) * MARGIN * 1000:.1f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
