"""Training cost of every registered architecture: seconds per image at 128x128 (and 192x192).

    python bench/arch_cost.py [--threads 2] [--batch 32]

Forward + backward + AdamW step on random 1-channel batches, after two warm-up steps; the
figure ``training.recipe`` uses (``ModelInfo.cost_128``) is the 128 px one on the reference
machine (2 CPU cores), plus ~1 ms per image for augmentation. The machine is shared: the
script alternates architectures over several rounds and prints the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
        print(
            f"{name:20s} {size:4d} px  {statistics.median(ts) * 1000:7.2f} ms/image  (registered cost_128 "
            f"{model_info(name).cost_128 * 1000:.1f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
