"""`python -m trainer MIXTURE --out-run NAME ...` is `kalmix train`, for torchrun.

    KALMIX_HOME=ws torchrun --nproc-per-node 8 -m trainer mix@v1 --out-run big --base models/Qwen2-0.5B

Every process runs this; each reads its rank from torchrun's environment, and the workspace
from $KALMIX_HOME (or the current folder). It goes through `kalmix`'s own entry point, so the
console, the quiet Hugging Face loaders and the one-line errors are the same. Single-node and
multi-node commands, checked on CPU with gloo: docs/scaling-training.md.
"""

import sys

from kalmix.cli import main

main(["train", *sys.argv[1:]])
