"""The CLIP tokenizer against transformers.CLIPTokenizer built from the same vocabulary."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minisd
from minisd.tokenizer import CLIPTokenizer

from .conftest import DATA


def corpus() -> list[str]:
    """Over 300 prompts: the hand-written list, each also with newlines/tabs and upper-cased, and ""."""
    lines = DATA.joinpath("prompts.txt").read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line]
    variants = [*lines]
    variants += [line.replace(" ", " \n\n\t ", 3) + "  \r\n" for line in lines]
    variants += [line.upper() for line in lines]
    return [*variants, ""]


TOKENIZER = minisd.load_tokenizer()  # shared by the property tests (hypothesis re-runs the test body)


@pytest.fixture(scope="module")
def tok():
    return TOKENIZER


def hf_ids(hf, text: str) -> list[int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf(text, truncation=True, max_length=77)["input_ids"]


def test_corpus_is_large_enough():
    assert len(corpus()) >= 300


def test_known_answer(tok):
    # The public ViT-L/14 tokenizer's ids, independent of how the test vocabulary folder is derived.
    assert tok.encode("a photograph of an astronaut riding a horse") == [
        49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407,
    ]  # fmt: skip


def test_corpus_equals_transformers(tok, hf_tokenizer):
    mismatches = []
    for text in corpus():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = tok.encode(text)
        if ours != hf_ids(hf_tokenizer, text):
            mismatches.append(text)
    assert not mismatches, f"{len(mismatches)} prompts differ, first: {mismatches[:3]!r}"


def test_decode_equals_transformers(tok, hf_tokenizer):
    for text in corpus():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids = tok.encode(text)
        assert tok.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True), text


def test_batch_padding_sd1(tok, hf_tokenizer):
    texts = ["a red circle", "a much longer prompt about a blue square on a green field", ""]
    ours = tok(texts)
    theirs = hf_tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert ours.shape == (3, 77) and ours.dtype == torch.long
    assert torch.equal(ours, theirs.input_ids)
    assert (ours[0, 5:] == 49407).all()  # SD1 pads with EOS


def test_sd2_padding_reads_pad_token(shipped_vocab_folder, tmp_path):
    """SD2.x's tokenizer folder: the special-tokens map says "!" (id 0), the config still says EOS; the map wins."""
    folder = tmp_path / "tokenizer"
    shutil.copytree(shipped_vocab_folder, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|endoftext|>", "model_max_length": 77}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}))
    tok = minisd.load_tokenizer(tmp_path)
    assert tok.pad_id == 0
    ids = tok(["a red circle"])[0]
    assert ids[:5].tolist() == tok.encode("a red circle") and (ids[5:] == 0).all()
    from transformers import CLIPTokenizer as HFTokenizer

    hf2 = HFTokenizer.from_pretrained(folder)
    ref = hf2(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ids[None], ref)


def test_truncation_keeps_eos_and_warns(tok, hf_tokenizer):
    text = "word " * 100
    with pytest.warns(UserWarning, match="the last 25 were dropped"):
        ids = tok.encode(text)
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
    assert ids == hf_ids(hf_tokenizer, text)


def test_special_tokens_and_empty(tok, hf_tokenizer):
    assert tok.encode("") == [49406, 49407]
    for text in ("a <|endoftext|> b", "<|startoftext|>x", "<|ENDOFTEXT|><|endoftext|>"):
        assert tok.encode(text) == hf_ids(hf_tokenizer, text)
    assert tok.vocab_size == 49408


def test_folder_and_single_file_sources(tok, shipped_vocab_folder, tmp_path):
    from_folder = minisd.load_tokenizer(shipped_vocab_folder)
    assert from_folder.vocab == tok.vocab and from_folder.merge_rank == tok.merge_rank
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"")  # a single file carries no tokenizer: the shipped one is used
    assert minisd.load_tokenizer(single).vocab == tok.vocab


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no vocab\.json \+ merges\.txt"):
        CLIPTokenizer.from_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        minisd.load_tokenizer(tmp_path / "nowhere")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=200))
def test_property_any_unicode(text):
    tok = TOKENIZER
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = tok.encode(text)
        batch = tok([text])
    assert 2 <= len(ids) <= 77
    assert ids[0] == 49406 and ids[-1] == 49407
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert batch.shape == (1, 77)


# Characters assigned in this Python's Unicode database. Code points assigned only in later Unicode versions
# (e.g. CJK Extension J, Unicode 17) can be letters to one regex engine and not to the other.
ASSIGNED = st.characters(exclude_categories=("Cn", "Cs", "Co"))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(ASSIGNED, max_size=80))
def test_property_equals_transformers(text, hf_tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert TOKENIZER.encode(text) == hf_ids(hf_tokenizer, text)
