"""The CLIP tokenizer: text to 77 token ids, by byte-level byte-pair encoding (BPE).

Steps, in order (each is one function below):

1. Special tokens written literally in the text (``<|startoftext|>``, ``<|endoftext|>``) are cut out
   first and kept as single ids.
2. Normalise the rest: Unicode NFC, every run of whitespace to one space, lower case.
3. Split into words with CLIP's pattern: a contraction ('s 't 're 've 'm 'll 'd), a run of letters, a
   single digit, or a run of other non-space characters. Whitespace separates words and is dropped.
4. Write each word's UTF-8 bytes as printable characters (the GPT-2 byte table), so that any text,
   emoji included, has a spelling in the 256-symbol base alphabet.
5. BPE: start from single symbols, the last one marked with ``</w>`` (end of word), and merge the
   adjacent pair with the best (lowest) rank until no listed pair remains.
6. Add BOS (49406) in front and EOS (49407) behind; truncate to 77 keeping EOS last; pad.

Where this differs from OpenAI's original ``simple_tokenizer.py``: OpenAI cleans text with ``ftfy.fix_text``
and unescapes HTML entities twice before normalising. minisd follows ``transformers.CLIPTokenizer``
instead, which is what the diffusers Stable Diffusion pipelines (and so most published pictures) use:
no ftfy, no HTML unescaping, so ``&amp;`` stays four symbols. The two agree on ordinary prompts; they
differ on mojibake and on HTML entities. Following transformers also avoids ftfy as a dependency.
"""

from __future__ import annotations

import gzip
import itertools
import json
import unicodedata
import warnings
from functools import lru_cache
from pathlib import Path

import regex
import torch

VOCAB_FILE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77

# Step 3. A special token written in another case than its own (so not cut out by step 1) is still one
# word here, which transformers' byte-level step then splits again into `<|`, `endoftext`, `|>`.
WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
WHITESPACE = regex.compile(r"\s+")
SPECIAL_SPLIT = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
# Python keeps bytes that are not UTF-8 (in sys.argv, say) as lone surrogates, U+DC80…U+DCFF: not encodable.
LONE_SURROGATE = regex.compile("[\ud800-\udfff]")


@lru_cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to 256 printable characters (step 4).

    Printable Latin-1 bytes stand for themselves; the others (control characters, space, ...) are moved
    to code points from 256 up, in byte order. The dict lists printable bytes first: that order is the
    order of the first 256 ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


class CLIPTokenizer:
    """Byte-level BPE tokenizer of CLIP, with SD's fixed context of 77 tokens.

    ``vocab`` maps a symbol to its id; ``merges`` lists the symbol pairs in the order they were learned
    (earlier = merged first). ``pad_id`` is EOS for SD1.x and 0 (``!``) for SD2.x.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pad_id: int | None = None):
        self.vocab = vocab
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
        self.pad_id = self.eos_id if pad_id is None else pad_id
        self.context_length = CONTEXT_LENGTH
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._bpe_cache: dict[str, list[str]] = {}

    @classmethod
    def from_openai_vocab(cls, path: str | Path = VOCAB_FILE, pad_id: int | None = None) -> CLIPTokenizer:
        """Build from OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (the file shipped with minisd).

        The file lists merges only; the 49,408 ids are: 256 byte symbols, the same 256 with ``</w>``,
        one symbol per merge (48,894 merges), then BOS and EOS.
        """
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        symbols = list(byte_to_unicode().values())
        symbols += [s + "</w>" for s in symbols]
        symbols += ["".join(pair) for pair in merges]
        symbols += [BOS, EOS]
        return cls({s: i for i, s in enumerate(symbols)}, merges, pad_id)

    @classmethod
    def from_folder(cls, folder: str | Path) -> CLIPTokenizer:
        """Build from a diffusers/transformers ``tokenizer/`` folder.

        The public SD folders hold ``vocab.json`` + ``merges.txt``; transformers ≥ 5 saves ``tokenizer.json``
        alone. The pad token is read from ``special_tokens_map.json``, else ``tokenizer_config.json`` (SD2.x's
        map says ``!``, id 0, while its config still says ``<|endoftext|>``).
        """
        folder = Path(folder)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
            merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        elif (folder / "tokenizer.json").is_file():
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            vocab = model["vocab"]
            merges = [tuple(m.split() if isinstance(m, str) else m) for m in model["merges"]]
        else:
            raise FileNotFoundError(
                f"tokenizer: {folder} has no vocab.json + merges.txt (nor tokenizer.json); is it a tokenizer folder?"
            )
        pad_token = None
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the map wins, as in transformers
            if (folder / name).is_file():
                pad_token = json.loads((folder / name).read_text(encoding="utf-8")).get("pad_token")
                if isinstance(pad_token, dict):  # {"content": "!", ...} in special_tokens_map.json
                    pad_token = pad_token["content"]
                if pad_token is not None:
                    break
        pad_id = vocab.get(pad_token) if pad_token is not None else None
        return cls(vocab, merges, pad_id)

    def save(self, folder: str | Path) -> None:
        """Write a transformers ``tokenizer/`` folder (vocab.json, merges.txt and the special tokens)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
        merges = "\n".join(" ".join(pair) for pair in self.merge_rank)
        (folder / "merges.txt").write_text(f"#version: 0.2\n{merges}\n", encoding="utf-8")
        special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": self.id_to_token[self.pad_id]}
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
        config = special | {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.context_length}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # Steps 2-5 ---------------------------------------------------------------------------------------

    @staticmethod
    def normalize(text: str) -> str:
        """Step 2: NFC, whitespace runs to one space, lower case.

        Lower case is taken one character at a time, as transformers does: ``str.lower`` on a whole string
        would turn a word-final capital sigma into ``ς`` rather than ``σ``, a different token.
        """
        text = WHITESPACE.sub(" ", unicodedata.normalize("NFC", text))
        return "".join(c.lower() for c in text)

    def bpe(self, word: str) -> list[str]:
        """Step 5: the word's final BPE symbols."""
        if word not in self._bpe_cache:
            self._bpe_cache[word] = self.bpe_steps(word)[-1]
        return self._bpe_cache[word]

    def bpe_steps(self, word: str) -> list[list[str]]:
        """Step 5, one merge at a time: the symbols before any merge, then after each merge.

        Each merge joins the adjacent pair with the best (lowest) rank, everywhere it occurs, left to right;
        it stops when no adjacent pair is in the merge list.
        """
        symbols = [*word[:-1], word[-1] + "</w>"]
        steps = [symbols]
        while len(symbols) > 1:
            best = min(set(itertools.pairwise(symbols)), key=lambda p: self.merge_rank.get(p, float("inf")))
            if best not in self.merge_rank:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
            steps.append(symbols)
        return steps

    def tokenize(self, text: str) -> list[str]:
        """Text to BPE symbols (no BOS/EOS): steps 1-5."""
        if not isinstance(text, str):
            raise TypeError(f"a prompt must be a string, got {type(text).__name__}")
        if LONE_SURROGATE.search(text):
            warnings.warn(
                "the prompt holds characters that are not valid Unicode (bytes that were not UTF-8, as a command "
                "line can pass them); each was read as U+FFFD, the replacement character",
                stacklevel=3,
            )
            text = LONE_SURROGATE.sub("\ufffd", text)
        symbols = []
        for piece in SPECIAL_SPLIT.split(text):
            if piece in (BOS, EOS):
                symbols.append(piece)
                continue
            for found in WORD_PATTERN.findall(self.normalize(piece)):
                words = ["<|", found[2:-2], "|>"] if found in (BOS, EOS) else [found]
                for word in words:
                    spelled = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
                    symbols.extend(self.bpe(spelled))
        return symbols

    # Step 6 and the public API --------------------------------------------------------------------

    def encode(self, text: str, truncate: bool = True) -> list[int]:
        """``[BOS, ..., EOS]``, at most 77 ids; warns when truncation dropped tokens."""
        ids = [self.vocab[s] for s in self.tokenize(text)]
        room = self.context_length - 2
        if truncate and len(ids) > room:
            warnings.warn(
                f"prompt is {len(ids) + 2} tokens; CLIP sees {self.context_length}, so the last "
                f"{len(ids) - room} were dropped",
                stacklevel=2,
            )
            ids = ids[:room]
        return [self.bos_id, *ids, self.eos_id]

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """Encode and pad to 77, as SD feeds CLIP: (B, 77) int64."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.encode(t) for t in texts]
        rows = [r + [self.pad_id] * (self.context_length - len(r)) for r in rows]
        return torch.tensor(rows, dtype=torch.long)  # (B, 77)

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Ids back to text; ``</w>`` becomes a space. Lossy where normalisation changed the text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        special = {self.bos_id, self.eos_id}
        spelled = "".join(self.id_to_token[i] for i in ids if not (skip_special_tokens and i in special))
        pieces = [p if p in (BOS, EOS) else self._unspell(p) for p in SPECIAL_SPLIT.split(spelled)]
        return "".join(pieces).replace("</w>", " ").strip()

    def _unspell(self, spelled: str) -> str:
        """Undo step 4: printable characters back to bytes, bytes to UTF-8 text."""
        return bytes(self.byte_decoder[c] for c in spelled).decode("utf-8", errors="replace")


def load_tokenizer(path: str | Path | None = None) -> CLIPTokenizer:
    """The CLIP tokenizer: the shipped OpenAI vocabulary (``path=None``) or a model's own.

    ``path`` may be a diffusers model folder (its ``tokenizer/`` is used), a ``tokenizer/`` folder itself,
    or a CompVis single file (which holds no tokenizer: the shipped vocabulary is used, as SD1.x needs).
    """
    if path is None:
        return CLIPTokenizer.from_openai_vocab()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer: {path} does not exist; give a model folder, file, or None")
    if path.is_file():
        return CLIPTokenizer.from_openai_vocab()
    folder = path / "tokenizer" if (path / "tokenizer").is_dir() else path
    return CLIPTokenizer.from_folder(folder)
