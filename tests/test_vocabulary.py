import pytest
import sentencepiece as spm
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from medvlm import tokenization
from medvlm.errors import UserError
from medvlm.modeling import MedVLMForConditionalGeneration
from medvlm.vocabulary import (describe_coverage, extend_sentencepiece_tokenizer, extend_vocabulary,
                               new_row_sources, tokenizer_coverage)
from tiny import tiny_config

REPORTS = [
    "The lungs are clear.", "No pleural effusion or pneumothorax.", "Heart size is normal.",
    "The cardiomediastinal silhouette is within normal limits.", "Mild cardiomegaly.",
    "Small left pleural effusion.", "Right lower lobe consolidation, concerning for pneumonia.",
    "No acute cardiopulmonary process.", "Low lung volumes with bibasilar atelectasis.",
    "Stable appearance of the chest.", "There is no focal consolidation.", "Moderate pulmonary edema.",
    "The osseous structures are intact.", "Interval improvement of the left basilar opacity.",
    "Endotracheal tube terminates above the carina.", "Nasogastric tube courses below the diaphragm.",
    "Degenerative changes of the thoracic spine.", "Blunting of the right costophrenic angle.",
    "Hyperinflated lungs consistent with emphysema.", "No evidence of pulmonary nodules.",
    "Enlarged cardiac silhouette.", "Patchy opacity in the left upper lobe.", "No free air under the diaphragm.",
    "Sternotomy wires are intact.", "Lungs are hyperexpanded.", "Trace bilateral pleural effusions.",
    "Right upper lobe mass.", "Pulmonary vascular congestion.", "No pneumothorax.", "Heart is mildly enlarged.",
]
# clinical notes: other words, and digits, hyphens and semicolons the reports never use
NOTES = [
    "A 65-year-old male presented with fever and cough; bilateral ground-glass opacities.",
    "History of hypertension and diabetes; fever for 3 days.",
    "The patient presented with cough and shortness of breath.",
    "Ground-glass opacities in both lungs, suspicious for viral pneumonia.",
    "A 72-year-old female with fever, cough and hypoxia.",
    "Bilateral ground-glass opacities with peripheral distribution.",
] * 4
SPECIAL = (tokenization.PAD, tokenization.BOS, tokenization.EOS, tokenization.UNK, tokenization.SEP)


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    return tokenization.train_report_tokenizer(REPORTS, tmp_path_factory.mktemp("old"), vocab_size=120)


@pytest.fixture(scope="module")
def extended(old, tmp_path_factory):
    out = tmp_path_factory.mktemp("extended")
    new, added = extend_sentencepiece_tokenizer(old, NOTES, out, new_pieces=40)
    return new, added, out


def word_level(vocab: dict) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def test_coverage_counts_words_pieces_and_unknowns_by_hand():
    tok = word_level({"[UNK]": 0, "[PAD]": 1, "the": 2, "lungs": 3, "are": 4, "clear": 5})
    texts = ["the lungs are clear", "the  heart is\nbig", ""]
    stats = tokenizer_coverage(tok, texts)
    assert stats == {"words": 8, "pieces": 8, "pieces_per_word": 1.0, "unknown": 3, "unknown_rate": 3 / 8}
    assert tokenizer_coverage(tok, texts, batch_size=1) == stats
    assert tokenizer_coverage(tok, []) == {"words": 0, "pieces": 0, "pieces_per_word": 0.0, "unknown": 0,
                                           "unknown_rate": 0.0}


def test_coverage_of_ours_and_of_a_tokenizer_without_unk(old):
    stats = tokenizer_coverage(old, NOTES[:6], batch_size=4)
    assert stats["pieces"] == sum(len(old.tokenize(t)) for t in NOTES[:6])  # no <s> </s> counted
    assert stats["unknown"] == sum(old(t, add_special_tokens=False)["input_ids"].count(old.unk_token_id)
                                   for t in NOTES[:6]) > 0
    assert stats["unknown_rate"] == stats["unknown"] / stats["pieces"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # every byte: nothing is ever unknown
    bpe.train_from_iterator(REPORTS, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet))
    byte_level = PreTrainedTokenizerFast(tokenizer_object=bpe)
    assert byte_level.unk_token_id is None
    stats = tokenizer_coverage(byte_level, NOTES)
    assert stats["unknown"] == 0 and stats["pieces"] > stats["words"] > 0


def test_describe_coverage_is_one_readable_line():
    stats = {"words": 2600, "pieces": 4210, "pieces_per_word": 4210 / 2600, "unknown": 12, "unknown_rate": 12 / 4210}
    assert describe_coverage(stats) == ("tokenizer coverage of the training text: 1.62 pieces per word, "
                                        "0.3% unknown (12 of 4,210 pieces)")
    rare = dict(stats, unknown=1, pieces=40000, unknown_rate=1 / 40000)
    assert "<0.1% unknown (1 of 40,000 pieces)" in describe_coverage(rare, "the notes")


def test_extension_covers_the_new_text_better(old, extended):
    new, added, _ = extended
    before, after = tokenizer_coverage(old, NOTES), tokenizer_coverage(new, NOTES)
    assert before["unknown"] > 0 and after["unknown"] == 0
    assert after["pieces_per_word"] < 0.85 * before["pieces_per_word"]
    assert 0 < len(added) <= 40 and len(new) == len(old) + len(added)
    assert new.convert_ids_to_tokens(list(range(len(old), len(new)))) == added
    assert not set(added) & set(old.get_vocab()) and not set(added) & set(SPECIAL)
    assert {"▁fever", "▁cough", "-", ";"} <= set(added)


def test_old_ids_never_change(old, extended):
    new, _, _ = extended
    new_vocab = new.get_vocab()
    assert all(new_vocab[piece] == i for piece, i in old.get_vocab().items())
    for name in ("pad", "bos", "eos", "unk", "sep"):
        assert getattr(new, f"{name}_token_id") == getattr(old, f"{name}_token_id"), name
    assert new.model_max_length == old.model_max_length
    assert new("no pleural effusion")["input_ids"] == old("no pleural effusion")["input_ids"]


def test_a_small_budget_goes_to_the_missing_characters_first(old, tmp_path):
    new, added = extend_sentencepiece_tokenizer(old, NOTES, tmp_path, new_pieces=10)
    assert len(added) == 10 and tokenizer_coverage(new, NOTES)["unknown"] == 0
    assert extend_sentencepiece_tokenizer(old, NOTES, tmp_path / "none", new_pieces=0)[1] == []


def test_saved_extension_reloads_with_identical_ids(extended, tmp_path):
    new, added, out = extended
    reloaded = tokenization.load_tokenizer(out)
    for text in NOTES[:6] + REPORTS:
        assert reloaded(text)["input_ids"] == new(text)["input_ids"]
    # the .model beside it is the extended one, and the sentencepiece library segments alike
    sp = spm.SentencePieceProcessor(model_file=str(out / tokenization.SPM_FILE))
    assert sp.get_piece_size() == len(new)
    assert sp.encode(NOTES[0]) == new(NOTES[0], add_special_tokens=False)["input_ids"]
    # and it extends again, keeping every id
    again, more = extend_sentencepiece_tokenizer(reloaded, ["Pneumomediastinum after intubation."], tmp_path)
    first = list(range(len(new)))
    assert more and again.convert_ids_to_tokens(first) == new.convert_ids_to_tokens(first)


def test_new_row_sources_are_the_old_pieces_of_each_new_piece(old, extended):
    new, added, _ = extended
    sources = new_row_sources(old, new, len(old))
    assert len(sources) == len(added) and all(sources)
    assert all(0 <= i < len(old) for ids in sources for i in ids)
    for piece, ids in zip(added, sources):
        if old.unk_token_id in ids:
            assert any(ch not in old.get_vocab() for ch in piece)
        else:  # the old pieces spell exactly the new piece (inner pieces stay inner)
            assert "".join(old.convert_ids_to_tokens(ids)) == piece
    assert sources[added.index("-")] == [old.unk_token_id]


def test_extension_needs_a_sentencepiece_tokenizer(old, tmp_path):
    other = word_level({"[UNK]": 0, "[PAD]": 1, "lungs": 2})
    with pytest.raises(UserError, match="sentencepiece"):
        extend_sentencepiece_tokenizer(other, NOTES, tmp_path)
    with pytest.raises(UserError, match="another directory"):
        extend_sentencepiece_tokenizer(old, NOTES, old._spm_source.parent)


needs_resize = pytest.mark.skipif(not hasattr(MedVLMForConditionalGeneration, "resize_vocabulary"),
                                  reason="MedVLMForConditionalGeneration.resize_vocabulary is not there yet")


@needs_resize
def test_extend_vocabulary_grows_the_model_from_the_old_rows(old, tmp_path):
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(tiny_config(vocab_size=len(old))).eval()
    embeddings = model.model.text.token_embeddings.weight.detach().clone()
    bias = torch.randn(len(old))
    with torch.no_grad():
        model.lm_bias.copy_(bias)
    new, summary = extend_vocabulary(model, old, NOTES, tmp_path, new_pieces=40)
    assert summary["added_pieces"] == len(new) - len(old) > 0
    assert (summary["vocab_size_before"], summary["vocab_size_after"]) == (len(old), len(new))
    assert summary["coverage_before"] == tokenizer_coverage(old, NOTES)
    assert summary["coverage_after"]["pieces_per_word"] < summary["coverage_before"]["pieces_per_word"]
    grown = model.model.text.token_embeddings.weight.detach()
    assert grown.shape == (len(new), embeddings.shape[1]) and model.config.vocab_size == len(new)
    torch.testing.assert_close(grown[:len(old)], embeddings, rtol=0, atol=0)
    torch.testing.assert_close(model.lm_bias.detach()[:len(old)], bias, rtol=0, atol=0)
    for row, ids in enumerate(new_row_sources(old, new, len(old)), start=len(old)):
        torch.testing.assert_close(grown[row], embeddings[ids].mean(0))
        torch.testing.assert_close(model.lm_bias[row].detach(), bias[ids].mean())
    batch = new(NOTES[:2], padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert batch["input_ids"].max() >= len(old)  # new pieces are in the input
    with torch.no_grad():
        logits = model(batch["input_ids"], torch.randn(2, 1, 32, 32), batch["attention_mask"]).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(new)) and torch.isfinite(logits).all()


def test_extend_vocabulary_refuses_a_model_of_another_vocabulary(old, tmp_path):
    model = MedVLMForConditionalGeneration(tiny_config(vocab_size=len(old) + 1))
    with pytest.raises(UserError, match="token embeddings"):
        extend_vocabulary(model, old, NOTES, tmp_path, new_pieces=5)
