"""CLIP's tokenizer without torch: prompts -> (B, 77) token ids for the text encoders of Stable Diffusion.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021), Sec. 2.4:
a lower-cased byte-level BPE with a 49,152-token vocabulary, every sequence bracketed by
``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407) and capped at 76 + 1 tokens. The BPE runs in
the Rust ``tokenizers`` library (imported lazily, like the runtime's backends), configured as Hugging
Face's ``CLIPTokenizer`` is, which is what the diffusers pipelines call:

    1. normalise: Unicode NFC, every run of whitespace -> one space, lower case
    2. split: CLIP's pattern ('s 't 're 've 'm 'll 'd, letter runs, single digits, punctuation runs);
       whitespace is dropped
    3. byte-level BPE with ``</w>`` marking a word's last piece
    4. <|startoftext|> ids <|endoftext|>, truncated to ``max_length`` (77) with the end token kept,
       then padded to ``max_length`` with the pad token

OpenAI's own tokenizer also runs ``ftfy.fix_text`` and ``html.unescape`` first; Hugging Face's fast
tokenizer does not, so prompts holding mojibake or HTML entities ("&amp;") can differ from OpenAI's
ids. The diffusers pipelines use Hugging Face's, and so does this.

The vocabulary is the merges of OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (MIT; see
assets/clip-bpe.LICENSE), shipped in this package; the 49,408 token ids are rebuilt from them as
CLIP's SimpleTokenizer does. A pipeline's own ``tokenizer/`` folder (vocab.json + merges.txt, or
tokenizer.json) is read with :meth:`ClipTokenizer.from_folder`, which honours its pad token (SD 2.x
pads with "!", id 0; SD 1.x with <|endoftext|>).
"""

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DiffPruneError

MERGES = Path(__file__).parent / "assets" / "clip-bpe-merges.txt.gz"
START, END = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77  # CLIP's context length: positional embeddings exist for 77 tokens
# CLIP's pre-tokenization pattern (openai/CLIP simple_tokenizer.py), without its special-token alternatives.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict:
    """CLIP's (and GPT-2's) reversible map of the 256 bytes to printable characters; its order fixes
    the first 512 token ids."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_vocabulary(merges: list) -> dict:
    """Token -> id as CLIP's SimpleTokenizer builds it: the 256 byte characters, the same with ``</w>``,
    one token per merge in rank order, then the start and end tokens (49406, 49407)."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [START, END]
    return {t: i for i, t in enumerate(tokens)}


def _read_merges(lines) -> list:
    return [tuple(line.split()) for line in lines if line and not line.startswith("#version")]


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DiffPruneError(
            "Tokenizing prompts needs the 'tokenizers' package (Hugging Face's Rust BPE; no torch). "
            "Install it with: pip install tokenizers") from None
    return tokenizers


@dataclass
class Tokens:
    """Token ids of a batch of prompts, and which prompts were cut to fit."""

    ids: "object"  # numpy int64 (B, max_length)
    lengths: list  # tokens before padding, start and end included (at most max_length)
    truncated: list = field(default_factory=list)  # indices of the prompts longer than max_length tokens


class ClipTokenizer:
    """Prompts to CLIP token ids, padded and truncated to ``max_length`` (see the module docstring).

    >>> tok = ClipTokenizer()
    >>> tok(["a photo of a cat"]).ids[0, :7].tolist()
    [49406, 320, 1125, 539, 320, 2368, 49407]
    """

    def __init__(self, vocab: dict | None = None, merges: list | None = None, pad_token: str = END,
                 max_length: int = MAX_LENGTH, tokenizer=None):
        tk = _tokenizers()
        if tokenizer is None:
            if merges is None:
                with gzip.open(MERGES, "rt", encoding="utf-8") as f:
                    merges = _read_merges(f.read().split("\n"))
            vocab = vocab or clip_vocabulary(merges)
            tokenizer = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                                                   end_of_word_suffix="</w>", fuse_unk=False, unk_token=END))
            tokenizer.normalizer = tk.normalizers.Sequence([
                tk.normalizers.NFC(), tk.normalizers.Replace(tk.Regex(r"\s+"), " "), tk.normalizers.Lowercase()])
            tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence([
                tk.pre_tokenizers.Split(tk.Regex(PATTERN), behavior="removed", invert=True),
                tk.pre_tokenizers.ByteLevel(add_prefix_space=False)])
            tokenizer.decoder = tk.decoders.ByteLevel()
            tokenizer.add_special_tokens([START, END])
            tokenizer.post_processor = tk.processors.RobertaProcessing(
                (END, tokenizer.token_to_id(END)), (START, tokenizer.token_to_id(START)),  # (sep, cls)
                trim_offsets=False, add_prefix_space=False)
        self.max_length = max_length
        self.pad_token = pad_token
        self.start_id, self.end_id = tokenizer.token_to_id(START), tokenizer.token_to_id(END)
        self.pad_id = tokenizer.token_to_id(pad_token)
        if None in (self.start_id, self.end_id, self.pad_id):
            raise DiffPruneError(
                f"The tokenizer has no id for {START!r}, {END!r} or its pad token {pad_token!r}; it is not a CLIP "
                "tokenizer. Give a pipeline's tokenizer/ folder (vocab.json + merges.txt, or tokenizer.json).")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def from_folder(cls, folder, embedded: bool = False) -> "ClipTokenizer":
        """A pipeline's ``tokenizer/`` folder, as ``CLIPTokenizer.save_pretrained`` writes it: tokenizer.json,
        or vocab.json + merges.txt; pad token and length from tokenizer_config.json / special_tokens_map.json.
        With ``embedded``, a folder holding only those settings (an export relying on the CLIP vocabulary
        shipped here) gets the embedded BPE with its pad token and length."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DiffPruneError(f"The tokenizer folder {str(folder)!r} is missing. Copy the pipeline's whole "
                                 "export folder (its tokenizer/ folders included), or re-export it.")
        settings, pad, length = tokenizer_settings(folder)
        if (folder / "tokenizer.json").is_file():
            try:
                tokenizer = _tokenizers().Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as e:  # the Rust library raises plain Exceptions on bad JSON
                raise DiffPruneError(f"Could not read {str(folder / 'tokenizer.json')!r}: {e}. Restore it from the "
                                     "original pipeline.") from None
            return cls(tokenizer=tokenizer, pad_token=pad, max_length=length)
        has_vocab = [(folder / name).is_file() for name in ("vocab.json", "merges.txt")]
        if embedded and not any(has_vocab) and settings:
            return cls(pad_token=pad, max_length=length)
        if not all(has_vocab):
            raise DiffPruneError(
                f"The tokenizer folder {str(folder)!r} holds neither tokenizer.json nor vocab.json + merges.txt, "
                "which a CLIP tokenizer needs. Copy the pipeline's whole tokenizer/ folder.")
        merges = _read_merges((folder / "merges.txt").read_text(encoding="utf-8").split("\n"))
        return cls(vocab=_read_json(folder / "vocab.json"), merges=merges, pad_token=pad, max_length=length)

    def __call__(self, prompts) -> Tokens:
        import numpy as np

        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise DiffPruneError(f"Prompts must be strings; got {type(bad[0]).__name__} {bad[0]!r}.")
        ids = np.full((len(prompts), self.max_length), self.pad_id, dtype=np.int64)
        lengths, truncated = [], []
        for i, enc in enumerate(self._tok.encode_batch(prompts)):
            tokens = enc.ids
            if len(tokens) > self.max_length:
                # Keep the first max_length - 1 tokens and end with <|endoftext|>, as CLIPTokenizer does.
                tokens = tokens[:self.max_length - 1] + [self.end_id]
                truncated.append(i)
            ids[i, :len(tokens)] = tokens
            lengths.append(len(tokens))
        return Tokens(ids=ids, lengths=lengths, truncated=truncated)

    def decode(self, ids) -> str:
        """Text of one row of ids, without start, end and pad tokens."""
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=True)
        return " ".join(text.replace("</w>", " ").split())  # </w> ends a word (CLIP's decoder does the same)

    def save(self, folder) -> Path:
        """Write vocab.json, merges.txt and the token settings, the layout of a pipeline's tokenizer/
        folder that ``transformers.CLIPTokenizer.from_pretrained`` and :meth:`from_folder` read."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = json.loads(self._tok.to_str())["model"]
        vocab = {t: i for t, i in sorted(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])}
        merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        settings = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": self.pad_token,
                    "model_max_length": self.max_length, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
        (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
        return folder


def tokenizer_settings(folder) -> tuple:
    """``(settings, pad_token, max_length)`` of a tokenizer folder, from special_tokens_map.json and
    tokenizer_config.json (the latter wins, as in transformers); the length is ``model_max_length``, CLIP's 77
    when absent or transformers' "no limit" (1e30). The one reader of these settings."""
    folder = Path(folder)
    settings = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            settings.update(_read_json(path))
    pad = settings.get("pad_token") or END
    pad = pad.get("content", END) if isinstance(pad, dict) else pad
    length = settings.get("model_max_length", MAX_LENGTH)
    length = MAX_LENGTH if not isinstance(length, int) or length > 10_000 else length
    return settings, pad, length


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiffPruneError(f"{str(path)!r} is not valid JSON ({e}); restore it from the original pipeline.") from None
