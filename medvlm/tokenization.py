"""A sentencepiece tokenizer trained on report text, exposed as an HF fast tokenizer.

sentencepiece learns the unigram vocabulary; the learnt pieces and scores are then loaded into a
`tokenizers` Unigram model so the tokenizer saves, loads and batches like any HF tokenizer
(`tokenizer.json`), and the processor can ship it with the model. The `.model` file is kept
beside it for provenance and for users of the sentencepiece library.
"""

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .errors import UserError

PAD, BOS, EOS, UNK, SEP = "<pad>", "<s>", "</s>", "<unk>", "<sep>"
SPM_FILE = "sentencepiece.model"


def _train_unigram(out_file: str | Path, vocab_size: int, **source) -> Path:
    """sentencepiece's unigram trainer with medvlm's special ids and case folding, reading
    `source` (sentence_iterator=..., or input=<tsv> with input_format="tsv")."""
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, _vocab_size_error(vocab_size):
        spm.SentencePieceTrainer.train(
            **source,
            model_prefix=f"{tmp}/sp",
            vocab_size=vocab_size,
            model_type="unigram",
            pad_id=0, bos_id=1, eos_id=2, unk_id=3,
            user_defined_symbols=[SEP],
            hard_vocab_limit=False,
            character_coverage=1.0,
            normalization_rule_name="nmt_nfkc_cf",
            minloglevel=2,
        )
        shutil.move(f"{tmp}/sp.model", out_file)
    return out_file


def train_sentencepiece(texts: Iterable[str], out_file: str | Path, vocab_size: int = 1000) -> Path:
    """Train a unigram sentencepiece model (case-folded) and write it to `out_file`.

    `vocab_size` is an upper bound: small corpora get the largest vocabulary they support.
    """
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise UserError("cannot train a tokenizer: the training split has no non-empty report text")
    return _train_unigram(out_file, vocab_size, sentence_iterator=iter(texts))


def train_sentencepiece_from_counts(counts: dict[str, int], out_file: str | Path, vocab_size: int = 1000) -> Path:
    """The same model trained from word counts alone ({word: times seen}), never the texts: a
    unigram vocabulary depends on the corpus only through them, as sentencepiece splits on
    whitespace before it learns pieces (its TSV input: one "word<TAB>count" per line)."""
    counts = {word: int(n) for word, n in counts.items() if word.strip() and "\t" not in word and n > 0}
    if not counts:
        raise UserError("cannot train a tokenizer: no word counts (every site sent none above federated.min_token_count)")
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "counts.tsv"
        table.write_text("".join(f"{word}\t{n}\n" for word, n in sorted(counts.items())), encoding="utf-8")
        return _train_unigram(out_file, vocab_size, input=str(table), input_format="tsv")


@contextlib.contextmanager
def _vocab_size_error(vocab_size: int):
    """sentencepiece's "vocabulary size is smaller than required_chars" as a UserError naming the
    setting (the vocabulary must hold every character of the corpus plus the special tokens)."""
    try:
        yield
    except RuntimeError as error:
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(error))
        if needed is None:
            raise
        raise UserError(f"data.tokenizer_vocab_size={vocab_size} is too small for the training reports: they use "
                        f"{needed.group(1)} distinct characters and special tokens; set it to at least "
                        f"{needed.group(1)}") from None


def fast_tokenizer_from_sentencepiece(spm_file: str | Path, model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """Wrap a trained sentencepiece model as an HF fast tokenizer that adds `<s> ... </s>`
    (and `<s> question <sep> answer </s>` for pairs, used by VQA)."""
    sp = spm.SentencePieceProcessor(model_file=str(spm_file))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=False))
    # the same normalisation sentencepiece trained with: NFKC, case folding, collapsed spaces
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    ids = {piece: sp.piece_to_id(piece) for piece in (PAD, BOS, EOS, UNK, SEP)}
    tok.post_processor = TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {SEP} $B {EOS}",
        special_tokens=[(BOS, ids[BOS]), (EOS, ids[EOS]), (SEP, ids[SEP])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, sep_token=SEP,
        model_max_length=model_max_length,
    )
    fast.init_kwargs["spm_file"] = SPM_FILE
    fast._spm_source = Path(spm_file)
    return fast


def train_report_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1000, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """Train on `texts` and save the HF tokenizer plus the sentencepiece model to `out_dir`."""
    return _saved(train_sentencepiece(texts, Path(out_dir) / SPM_FILE, vocab_size), model_max_length)


def report_tokenizer_from_counts(
    counts: dict[str, int], out_dir: str | Path, vocab_size: int = 1000, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """`train_report_tokenizer` from word counts ({word: times seen}) instead of texts."""
    return _saved(train_sentencepiece_from_counts(counts, Path(out_dir) / SPM_FILE, vocab_size), model_max_length)


def _saved(spm_file: Path, model_max_length: int) -> PreTrainedTokenizerFast:
    """The HF tokenizer of a trained sentencepiece model, saved beside it."""
    tokenizer = fast_tokenizer_from_sentencepiece(spm_file, model_max_length)
    tokenizer.save_pretrained(str(spm_file.parent))
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> None:
    """Save an HF tokenizer, carrying its sentencepiece model file along when it has one."""
    tokenizer.save_pretrained(str(out_dir))
    source = getattr(tokenizer, "_spm_source", None)
    if source is not None and Path(source).is_file() and Path(source).resolve() != (Path(out_dir) / SPM_FILE).resolve():
        shutil.copyfile(source, Path(out_dir) / SPM_FILE)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Any HF tokenizer saved in a local directory (ours, or e.g. a BERT vocabulary)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"tokenizer directory not found: {path} (data.tokenizer, or a model directory's tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if (path / SPM_FILE).is_file():
        tokenizer._spm_source = path / SPM_FILE
    if tokenizer.pad_token is None:
        raise UserError(f"{path}: the tokenizer has no pad token; set one before training")
    return tokenizer


def lm_tokenizer(path: str | Path, model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """A pretrained LM's own tokenizer (local folder or hub id), made to frame texts the way
    medvlm's training and generation expect: `bos text eos`, and `bos question sep answer eos`
    for VQA. LMs name these tokens differently or lack some: BOS falls back to CLS, then EOS
    (GPT-2 and Qwen start documents with their end-of-text token); EOS to SEP; PAD to EOS (pads
    are masked out of the loss by the attention mask, never by id); a missing separator is added
    as a new special token `<sep>` (the model then grows one embedding row).

    The result is a plain `PreTrainedTokenizerFast` around a copy of the LM's tokenizer, so the
    framing saves and loads as written, whatever the LM's own tokenizer class would rebuild."""
    from .modeling.sources import resolve_local

    folder = resolve_local(path, "model.text.pretrained_path")
    try:
        source = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"model.text.pretrained_path={str(path)!r}: no tokenizer there ({error}); "
                        "set data.tokenizer to a tokenizer folder") from None
    if not getattr(source, "is_fast", False):
        raise UserError(f"model.text.pretrained_path={str(path)!r}: its tokenizer has no fast (tokenizers) "
                        "version; set data.tokenizer to one")
    bos = source.bos_token or source.cls_token or source.eos_token
    eos = source.eos_token or source.sep_token
    if bos is None or eos is None:
        raise UserError(f"model.text.pretrained_path={str(path)!r}: its tokenizer has no end-of-text, EOS or SEP "
                        "token to end reports with")
    backend = Tokenizer.from_str(source.backend_tokenizer.to_str())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=source.pad_token or eos,
        unk_token=source.unk_token, sep_token=source.sep_token or SEP, model_max_length=model_max_length,
    )  # an unknown sep token is added to the vocabulary as a special token
    sep = tokenizer.sep_token
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (bos, eos, sep)}
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {sep} $B {eos}",
        special_tokens=list(ids.items()),
    )
    return tokenizer
