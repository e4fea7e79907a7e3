"""Gives a checkpoint as downloaded from the hub (Phi-3, Qwen2.5-Math) the seven step tokens.

    python launch/convert_checkpoint.py --source=/mnt/models/Phi-3-mini-4k-instruct \
        --out=/mnt/models/Phi-3-mini-4k-instruct-rstar

writes a new directory: the tokenizer with `<code>`, `<end_of_step>`, ... added after its largest
id, and the model with an embedding (and LM-head) row for each, starting at the mean of the
trained rows; every other weight is copied unchanged, in the dtype the source stores. The tables
grow (to a multiple of 128 rows) only when the new ids do not fit. Use the new directory as
`--config.model.checkpoint`, or let launch/tpu_evolve.py do the same on first use (it converts
a stock `config.model.checkpoint` once into <workdir>/base/model).

A source whose tokenizer already has every step token is left alone: nothing is written, exit 0.
Exit status 2: bad input (the message names the path and what to do).
"""

import json
import logging
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_SOURCE = flags.DEFINE_string("source", None,
                              "A Hugging Face model directory: config.json, *.safetensors and the "
                              "tokenizer files (tokenizer.model or tokenizer.json).")
_OUT = flags.DEFINE_string("out", None, "The new directory to write (must not exist, or be empty).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None,
                                 "The checkpoint's tokenizer directory, when its files are not in "
                                 "--source.")
_PAD_TO = flags.DEFINE_integer("pad_to_multiple", 128,
                               "When the new ids do not fit the embedding table, it grows to "
                               "a multiple of this many rows.")
flags.mark_flags_as_required(["source", "out"])


def main(argv):
    del argv
    from rstar_jax.models import vocab

    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        summary = vocab.convert_checkpoint(_SOURCE.value, _OUT.value, tokenizer=_TOKENIZER.value,
                                           pad_to_multiple=_PAD_TO.value)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not summary["written"]:
        print(f"{summary['tokenizer']} already has every step token "
              f"({json.dumps(summary['present'])}): nothing to convert, nothing written; use "
              f"{summary['source']} as it is")
        return 0
    print(f"added {len(summary['added'])} step tokens: {json.dumps(summary['added'])}")
    if summary["present"]:
        print(f"already single tokens, kept: {json.dumps(summary['present'])}")
    grew = "" if summary["rows_after"] == summary["rows_before"] else " (grown)"
    print(f"embedding rows: {summary['rows_before']} -> {summary['rows_after']}{grew}; tokenizer "
          f"ids: {summary['tokenizer_ids_before']} -> {summary['tokenizer_ids_after']}; weights in "
          f"{summary['dtype']}; new rows at the mean of the first "
          f"{summary['tokenizer_ids_before']}")
    print(f"written to {summary['out']}; use --config.model.checkpoint={summary['out']}")
    return 0


if __name__ == "__main__":
    app.run(main)
