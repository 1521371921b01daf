"""kalmix: data-centric corpus construction for text-embedding models."""

import os

# kalmix draws one rich progress bar per step; the Hugging Face libraries' own tqdm bars
# ("Loading weights ...") would interleave with it. A user can still set the variable to 0.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

__version__ = "0.1.0"
