"""How well a tokenizer fits a text, and growing medvlm's sentencepiece vocabulary to fit new text.

A checkpoint fine-tuned on new text (`train.init_from`) keeps the tokenizer fitted to its own
reports: new words split into many short pieces, and characters it never saw become `<unk>`, which
the model can neither read nor write. `tokenizer_coverage` measures this so a run can report it;
`extend_vocabulary` appends pieces learnt from the new text after the old ones (so every old id, and
the embedding row it indexes, keeps its meaning) and initialises each new row from the old rows of
the pieces it replaces.
"""

import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

# transformers' own copy of sentencepiece's model schema: sentencepiece 0.2.3's generated file
# needs protobuf >= 7, which Flower (the federated extra) does not allow
from transformers.utils import sentencepiece_model_pb2_new as sentencepiece_model_pb2
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from . import tokenization
from .errors import UserError

NORMAL = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL


def tokenizer_coverage(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 1000) -> dict:
    """Words (whitespace-split), pieces (no special tokens), pieces per word and unknown pieces of
    `texts` under any HF tokenizer; one without an unk token (byte-level BPE) has no unknowns.
    Batched, so a fast tokenizer encodes in parallel."""
    unk = tokenizer.unk_token_id
    words = pieces = unknown = 0
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        words += sum(len(text.split()) for text in batch)
        # verbose=False: a long text here is no error, so no "longer than model_max_length" warning
        encoded = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, verbose=False)
        for ids in encoded["input_ids"]:
            pieces += len(ids)
            if unk is not None:
                unknown += sum(1 for i in ids if i == unk)
    return {"words": words, "pieces": pieces, "pieces_per_word": pieces / words if words else 0.0,
            "unknown": unknown, "unknown_rate": unknown / pieces if pieces else 0.0}


def describe_coverage(stats: dict, what: str = "the training text") -> str:
    """One line for the run log, e.g. "tokenizer coverage of the training text: 1.62 pieces per
    word, 0.3% unknown (12 of 4,210 pieces)"; a rate that rounds to 0.0% but is not 0 reads <0.1%."""
    rate = stats["unknown_rate"]
    percent = "<0.1%" if 0 < rate < 0.0005 else f"{rate:.1%}"
    return (f"tokenizer coverage of {what}: {stats['pieces_per_word']:.2f} pieces per word, {percent} unknown "
            f"({stats['unknown']:,} of {stats['pieces']:,} pieces)")


def extend_sentencepiece_tokenizer(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], out_dir: str | Path, new_pieces: int = 1000
) -> tuple[PreTrainedTokenizerFast, list[str]]:
    """Append at most `new_pieces` pieces of a unigram model fitted to `texts` to the tokenizer's
    sentencepiece model, save the result (`.model` and HF files) to `out_dir` and return it with
    the added pieces.

    Old pieces keep their ids and scores. Characters the old vocabulary lacks come first (each
    removes `<unk>`s), then the other new pieces by score. A new model's log-probabilities sit on a
    different scale from the old one's (a smaller vocabulary gives each piece more mass), so each
    new score is shifted by the difference of the two models' median scores: a new piece then
    competes with old pieces as it did inside its own model, and wins over the several old pieces
    it would otherwise be split into.
    """
    source = getattr(tokenizer, "_spm_source", None)
    if source is None or not Path(source).is_file():
        raise UserError("vocabulary extension needs medvlm's sentencepiece tokenizer (a tokenizer directory with "
                        f"{tokenization.SPM_FILE}); this tokenizer has none")
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(source).resolve().parent:
        raise UserError(f"{out_dir}: the extended tokenizer must go to another directory than the one it extends "
                        "(the model there still uses the old vocabulary)")
    old = sentencepiece_model_pb2.ModelProto()
    old.ParseFromString(Path(source).read_bytes())
    if len(old.pieces) != len(tokenizer):
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but its {tokenization.SPM_FILE} "
                        f"{len(old.pieces)}: tokens added outside sentencepiece cannot be kept when extending")
    have = {p.piece for p in old.pieces}
    texts = list(texts)
    # room for new pieces beyond those shared with the old vocabulary and every character of the text
    size = len(old.pieces) + new_pieces + len(set("".join(texts)))
    with tempfile.TemporaryDirectory() as tmp:
        fitted = sentencepiece_model_pb2.ModelProto()
        fitted.ParseFromString(tokenization.train_sentencepiece(texts, Path(tmp) / "new.model", size).read_bytes())
    new = [p for p in fitted.pieces if p.type == NORMAL and p.piece not in have]
    new.sort(key=lambda p: (len(p.piece) > 1, -p.score))  # missing characters first, then by score
    new = new[:max(new_pieces, 0)]
    shift = (statistics.median(p.score for p in old.pieces if p.type == NORMAL)
             - statistics.median(p.score for p in fitted.pieces if p.type == NORMAL))
    for piece in new:
        old.pieces.add(piece=piece.piece, score=piece.score + shift, type=NORMAL)
    old.trainer_spec.vocab_size = len(old.pieces)
    out_dir.mkdir(parents=True, exist_ok=True)
    spm_file = out_dir / tokenization.SPM_FILE
    spm_file.write_bytes(old.SerializeToString())
    extended = tokenization.fast_tokenizer_from_sentencepiece(spm_file, model_max_length=tokenizer.model_max_length)
    extended.save_pretrained(str(out_dir))
    return extended, [p.piece for p in new]


def new_row_sources(old_tokenizer: PreTrainedTokenizerFast, new_tokenizer: PreTrainedTokenizerFast,
                    first_new_id: int) -> list[list[int]]:
    """For each id from `first_new_id` on, the old ids its piece splits into: the new embedding row
    starts as the mean of those rows, so the model begins by reading a new piece roughly as it read
    the old pieces it replaces.

    The piece itself is segmented by the old unigram model, not re-tokenised as text: a piece inside
    a word ("itis") must map to inner-word pieces, not to word-initial ones ("▁it"). A piece of
    unseen characters maps to `<unk>`; never an empty list.
    """
    model = old_tokenizer.backend_tokenizer.model
    unk = old_tokenizer.unk_token_id
    sources = []
    for piece in new_tokenizer.convert_ids_to_tokens(list(range(first_new_id, len(new_tokenizer)))):
        ids = [token.id for token in model.tokenize(piece)]
        sources.append(ids or [unk])
    return sources


def extend_vocabulary(model, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], out_dir: str | Path,
                      new_pieces: int = 1000) -> tuple[PreTrainedTokenizerFast, dict]:
    """Extend `tokenizer` to `texts` (saved to `out_dir`) and grow `model`'s token embeddings and LM
    head to match, each new row the mean of the old rows of its pieces. Returns the new tokenizer and
    a summary: pieces added, vocabulary sizes, and coverage of `texts` before and after."""
    if model.config.vocab_size != len(tokenizer):
        raise UserError(f"the model has {model.config.vocab_size} token embeddings but the tokenizer "
                        f"{len(tokenizer)} tokens: they are not each other's")
    texts = list(texts)
    before = tokenizer_coverage(tokenizer, texts)
    extended, added = extend_sentencepiece_tokenizer(tokenizer, texts, out_dir, new_pieces)
    if added:
        model.resize_vocabulary(len(extended), new_row_sources(tokenizer, extended, len(tokenizer)))
    return extended, {"added_pieces": len(added), "vocab_size_before": len(tokenizer),
                      "vocab_size_after": len(extended), "coverage_before": before,
                      "coverage_after": tokenizer_coverage(extended, texts)}
