"""open_clip's ``SimpleTokenizer`` semantics (used by HPSv2), on the CLIP BPE vocabulary.

The text is cleaned exactly as open_clip does (``ftfy.fix_text``, ``html.unescape`` twice, strip,
whitespace runs collapsed, lower case), split with CLIP's regular expression, byte-level BPE
encoded, wrapped in ``<start_of_text>`` (49406) / ``<end_of_text>`` (49407), zero-padded to the
context length; longer texts are cut and their last id set to ``<end_of_text>``.

The merges come from ``bpe_simple_vocab_16e6.txt.gz`` (the file open_clip ships) or from an HF
``merges.txt`` of the same vocabulary; ids are assigned the way open_clip assigns them (bytes,
bytes + ``</w>``, merges, the two specials), which is also the order of the HF ``vocab.json``.
"""

from __future__ import annotations

import functools
import gzip
import html
from pathlib import Path

import ftfy
import regex
import torch

SOT_TEXT = "<start_of_text>"
EOT_TEXT = "<end_of_text>"
_N_MERGES = 49152 - 256 - 2  # the number of merges open_clip reads from its BPE file


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE (GPT-2 / CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """Merges from open_clip's ``.txt.gz`` (header line first) or an HF ``merges.txt``."""
    path = Path(path)
    raw = gzip.open(path).read().decode("utf-8") if path.suffix == ".gz" else path.read_text(encoding="utf-8")
    lines = raw.split("\n")
    if lines and "#version" in lines[0]:  # the header line of both formats
        lines = lines[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()][:_N_MERGES]
    return [m for m in merges if len(m) == 2]


class OpenCLIPTokenizer:
    """Callable: ``tokenizer(texts, context_length=77) -> LongTensor (N, context_length)``."""

    pattern = regex.compile(
        r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )

    def __init__(self, merges: list[tuple[str, str]], context_length: int = 77):
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT_TEXT, EOT_TEXT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {SOT_TEXT: SOT_TEXT, EOT_TEXT: EOT_TEXT}
        self.sot_id = self.encoder[SOT_TEXT]
        self.eot_id = self.encoder[EOT_TEXT]
        self.context_length = context_length

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 77) -> "OpenCLIPTokenizer":
        return cls(read_merges(path), context_length)

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pattern.findall(_clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = torch.tensor(ids)
        return out
