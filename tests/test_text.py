"""Real conditioning for Diff-Pruning: CLIP tokenization (torch-free), a CLIP-style text encoder and a VAE
built from config, captioned calibration data, and gradients that reach cross-attention."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from diffprune.runtime.errors import DiffPruneError
from diffprune.runtime.text import ClipTokenizer

PROMPTS = [
    "a handwritten digit seven",
    "A  Photo\tof a CAT!!",  # case and whitespace runs
    "",  # the empty prompt of classifier-free guidance
    "   leading and trailing   ",
    "don't you're we'll I'm they've it'd 3.14159 x86_64 #hashtag @user e-mail",  # contractions, digits one by one
    "naïve café Ünïcödé Straße 東京 😀 ❤️",  # NFC, non-Latin letters, emoji bytes
    "an astronaut riding a horse on mars, highly detailed, 8k, trending on artstation",
    "word " * 100,  # 100 words: truncated
]


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer()


def test_the_shipped_vocabulary_is_clips(tok):
    assert tok.vocab_size == 49408
    assert (tok.start_id, tok.end_id, tok.pad_id) == (49406, 49407, 49407)
    out = tok(["a photo of a cat"])
    # ids from OpenAI's CLIP README example ("a photo of a cat" -> 320 1125 539 320 2368)
    assert out.ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert out.ids.shape == (1, 77) and out.ids.dtype == np.int64 and (out.ids[0, 7:] == 49407).all()
    assert tok.decode(out.ids[0]) == "a photo of a cat"
    assert Path(__file__).parents[1].joinpath("runtime/assets/clip-bpe.LICENSE").read_text().count("MIT") >= 2


def test_ids_equal_transformers_clip_tokenizer(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path / "tokenizer")
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    expected = hf(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert tok(PROMPTS).ids.tolist() == expected


def test_ids_equal_openai_simple_tokenizer(tok):
    # OpenAI's pure-Python tokenizer as open-clip-torch ships it (loaded as a file: open_clip's package
    # imports torchvision). It pads with 0 rather than <|endoftext|>; compare up to the end token.
    pytest.importorskip("ftfy")
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open-clip-torch is not installed")
    path = Path(spec.submodule_search_locations[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_openai_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    reference = module.SimpleTokenizer()(PROMPTS).numpy()
    ours = tok(PROMPTS)
    for row, mine, n in zip(reference, ours.ids, ours.lengths):
        assert row[:n].tolist() == mine[:n].tolist() and not row[n:].any()


def test_a_prompt_longer_than_77_tokens_is_truncated_and_reported(tok):
    out = tok(PROMPTS)
    assert out.truncated == [len(PROMPTS) - 1]
    long = out.ids[-1]
    assert long[0] == 49406 and long[-1] == 49407 and out.lengths[-1] == 77
    assert (long[1:76] == tok(["word"]).ids[0, 1]).all()  # the first 75 words kept, the end token last
    assert out.lengths[:3] == [6, 8, 2]


def test_whitespace_and_case_do_not_change_the_ids(tok):
    a, b = tok(["A  Photo\tof a CAT!!", "a photo of a cat !!"]).ids
    assert a.tolist() == b.tolist()
    assert tok(["   leading and trailing   "]).ids.tolist() == tok(["leading and trailing"]).ids.tolist()


def test_a_pipeline_tokenizer_folder_keeps_its_pad_token(tok, tmp_path):
    # SD 2.x's tokenizer pads with "!" (id 0); SD 1.x's with <|endoftext|>.
    folder = tok.save(tmp_path / "tokenizer")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": {"content": "!"}}))
    sd2 = ClipTokenizer.from_folder(folder)
    ids = sd2(["a cat"]).ids[0]
    assert ids[:4].tolist() == [49406, 320, 2368, 49407] and sd2.pad_id == 0 and not ids[4:].any()


def test_a_tokenizer_json_folder_gives_the_same_ids(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path / "slow")
    transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "slow")).save_pretrained(str(tmp_path / "fast"))
    assert (tmp_path / "fast" / "tokenizer.json").is_file()
    assert ClipTokenizer.from_folder(tmp_path / "fast")(PROMPTS).ids.tolist() == tok(PROMPTS).ids.tolist()


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "merges.txt").unlink(), "neither tokenizer.json nor vocab.json"),
    (lambda f: (f / "vocab.json").write_text("{not json"), "is not valid JSON"),
])
def test_a_broken_tokenizer_folder_is_a_clear_error(tok, tmp_path, damage, message):
    folder = tok.save(tmp_path / "tokenizer")
    damage(folder)
    with pytest.raises(DiffPruneError, match=message):
        ClipTokenizer.from_folder(folder)


def test_prompts_must_be_strings(tok):
    with pytest.raises(DiffPruneError, match="Prompts must be strings; got int 7"):
        tok(["a cat", 7])

