"""The prompt search of apo_custom_algorithm.py, packaged with the Trainer.

The Trainer starts the runner processes, runs the algorithm, and stops everything
when it finishes, fails, or Ctrl-C arrives.

    python examples/apo_custom_algorithm_trainer.py [--store runs/apo-trainer] [--runners 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apo_custom_algorithm import (
    TEMPLATES,
    apo_rollout,
    find_best_prompt,
    start_offline_llm,
    use_offline_llm,
)

from store_fs.trainer import Trainer, algo


@algo
async def apo_algorithm(store: Any) -> tuple[str, float]:
    return await find_best_prompt(store, TEMPLATES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.environ.get("AGL_STORE", "runs/apo-trainer"))
    parser.add_argument("--runners", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    server = start_offline_llm() if use_offline_llm() else None
    try:
        trainer = Trainer(algorithm=apo_algorithm, n_runners=args.runners, store=args.store)
        best, reward = trainer.fit(apo_rollout)
        print(f"[Trainer] best prompt: '{best}' (reward {reward})")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
