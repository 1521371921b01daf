"""`python -m trainer MIXTURE --out-run NAME ...`: `kalmix train` as a module, for torchrun.

    torchrun --nproc-per-node 8 -m trainer mix@v1 --out-run big --base models/Qwen2-0.5B

Every process runs this; each reads its rank from torchrun's environment. Single-node and
multi-node commands, checked on CPU with gloo: docs/scaling-training.md.
"""

import sys

from corpus.console import err_console
from corpus.errors import KalmixError
from trainer.cli import app

try:
    app()
except KalmixError as err:
    err_console.print(f"[red]error:[/] {err}")
    sys.exit(2)
