"""Data: text files -> token files, masks and a manifest, and the memory-mapped loader that trains on them.

    python -m bitttt.data prepare INPUT... --out DIR [--tokenizer PATH] [--vocab-size N] ...

Modules:

* `readers`: the input kinds (.txt/.md, .jsonl with prompt/response records, each optionally .gz), UTF-8
  checking, documents: `iter_texts`, `check_inputs`.
* `writer`: the train/val split rule and the token / mask files of each split.
* `pipeline`: `prepare` (tokenizer training, encoding, manifest, atomic install of the output folder) and
  `train_tokenizer` (a `Tokenizer` trained on the readers' texts).
* `layout`: the folder's file names, format tag and `token_dtype`.
* `loader`: `TokenData` (a split, memory-mapped), `Batches` (random training windows) and `Streams`
  (consecutive windows for streaming training).
* `corpus`: the built-in corpus (`builtin:python-docs`).
* `__main__`: the command line.

Output directory:

* ``tokenizer.model``: the tokenizer (trained on the inputs when none is given)
* ``train.bin``, ``val.bin``: raw little-endian token ids, uint16 when vocab_size <= 65536 else uint32
* ``train.mask``, ``val.mask``: uint8 per token, 1 = learn this token; only when an instruction record exists
  (plain-text documents then get mask 1)
* ``manifest.json``: written last; see `prepare`.

Corpora larger than memory are streamed: files are read in blocks, long documents are encoded in segments cut
at newlines (newline is its own token, so this does not change the tokens), and tokens are appended to the open
files in batches. Everything is written into a temporary folder next to the output and renamed into place at the
end, so a failure leaves nothing behind.
"""
from .corpus import BUILTIN, python_docs, write_builtin
from .layout import FORMAT, FORMAT_VERSION, MANIFEST, SPLITS, TOKENIZER_FILE, DataError, token_dtype
from .loader import Batches, Streams, TokenData
from .pipeline import prepare, train_tokenizer
from .readers import JSONL_EXTENSIONS, TEXT_EXTENSIONS, check_inputs, iter_texts

__all__ = [
    "BUILTIN",
    "FORMAT",
    "FORMAT_VERSION",
    "JSONL_EXTENSIONS",
    "MANIFEST",
    "SPLITS",
    "TEXT_EXTENSIONS",
    "TOKENIZER_FILE",
    "Batches",
    "Streams",
    "DataError",
    "TokenData",
    "check_inputs",
    "iter_texts",
    "prepare",
    "python_docs",
    "token_dtype",
    "train_tokenizer",
    "write_builtin",
]
