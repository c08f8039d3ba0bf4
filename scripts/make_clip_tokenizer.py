"""Write the CLIP BPE tokenizer files that farm ships (farm/models/tokenizer/).

The files are derived from OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz` (MIT licence;
the same file ships inside the `open_clip_torch` and `clip-anytorch` wheels). The vocab is
built the way CLIP's own SimpleTokenizer builds it: 256 byte symbols, the same with the
end-of-word marker, one entry per merge, then the two special tokens (49408 in all).

    python scripts/make_clip_tokenizer.py path/to/bpe_simple_vocab_16e6.txt.gz
"""
import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "farm" / "models" / "tokenizer"
N_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    # Printable bytes map to themselves; the rest to code points above 255, so that every
    # byte has a visible, non-whitespace symbol (GPT-2's scheme, reused by CLIP).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def main(bpe_path: str) -> None:
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
