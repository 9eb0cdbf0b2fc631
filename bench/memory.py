"""Print the PSS and RSS of a fresh process with the model loaded in N slots (one token evaluated in each).

PSS counts the memory-mapped weight pages once across slots (and across processes sharing them).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench.run import CORES, default_model_path, pss_mb, rss_mb
from inference.model import ChatModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--model", default=os.environ.get("CHAT_MODEL_PATH") or default_model_path())
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    cache = Path(os.environ.get("CHAT_DATA_DIR", root / ".data")) / "models"
    model = ChatModel.load(args.model, cache_dir=cache, slots=args.slots, threads=CORES)
    ids = model.prompt_ids([{"role": "user", "content": "Hello there, how are you today?"}])
    for slot in model.scheduler.slots:
        slot.ctx.eval(ids, threads=CORES, batch_size=64)
    print(json.dumps({"slots": args.slots, "pss_mb": round(pss_mb(), 1), "rss_mb": round(rss_mb(), 1)}))
    model.close()


if __name__ == "__main__":
    main()
