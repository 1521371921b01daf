"""kalmix: data-centric corpus construction for text-embedding models."""

import os

# kalmix draws one rich progress bar per step; the libraries' own tqdm bars (Hugging Face's
# "Loading weights ...", transformers' "Converting and de-quantizing GGUF tensors...") would
# interleave with it, and fill logs with carriage returns. tqdm reads TQDM_DISABLE when it is
# first imported, which is after this. To see them: HF_HUB_DISABLE_PROGRESS_BARS=0 and
# TQDM_DISABLE= (empty: tqdm reads any other value, "0" too, as true).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

__version__ = "0.1.0"
