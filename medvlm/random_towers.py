"""Random-weight stand-ins for pretrained language models, saved in their real on-disk format.

Tests and benchmarks cannot download checkpoints, yet what they check is loading: a folder with
`config.json`, safetensors weights and a tokenizer, as `save_pretrained` writes them. This
module writes such folders for any transformers causal LM (or BERT) config, with a word-level
tokenizer whose special tokens follow the family's own conventions (GPT-2 has only an
end-of-text token, Llama `<s>`/`</s>`/`<unk>`, Qwen2 a pad and an end token but no BOS, BERT
`[CLS]`/`[SEP]`/`[PAD]`/`[MASK]`), so the framing rules of `tokenization.lm_tokenizer` are
exercised as a real checkpoint would exercise them.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedTokenizerFast

# special tokens of each tokenizer convention: (added in this order, then the role of each)
TOKEN_STYLES = {
    "gpt2": (["<|endoftext|>"], {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
    "llama": (["<unk>", "<s>", "</s>"], {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
    "gemma": (["<pad>", "<eos>", "<bos>", "<unk>"], {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}),
    "bert": (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}),
}
STYLE_OF = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "phi3": "llama", "qwen2": "qwen2", "qwen3": "qwen2",
            "gemma": "gemma", "gemma2": "gemma", "gemma3_text": "gemma", "bert": "bert"}


BYTE_LEVEL = ("gpt2", "qwen2")  # styles whose real tokenizers are byte-level BPE (their classes rebuild one)


def word_tokenizer(words: list[str], style: str) -> PreTrainedTokenizerFast:
    """A tokenizer over `words` with the style's special tokens first: byte-level BPE trained on
    the words for GPT-2 and Qwen styles (as theirs are), lower-casing word-level otherwise."""
    specials, roles = TOKEN_STYLES[style]
    if style in BYTE_LEVEL:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=256 + len(specials) + 4 * len(set(words)), special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        backend.train_from_iterator([" ".join(words)] * 4, trainer)
    else:
        vocab = {token: i for i, token in enumerate(dict.fromkeys([*specials, *words]))}
        backend = Tokenizer(models.WordLevel(vocab, unk_token=roles.get("unk_token") or specials[0]))
        backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles)


def save_random_lm(folder: str | Path, text_config: dict, words: list[str], extra_rows: int = 0) -> Path:
    """Write a random-weight LM of `text_config` (a dict with `model_type`) and a tokenizer over
    `words` to `folder`, as the family's checkpoints are laid out. `extra_rows`: embedding rows
    beyond the tokenizer (as Qwen's checkpoints carry). BERT is saved as a masked LM, the form
    BERT-family checkpoints ship in."""
    folder = Path(folder)
    fields = dict(text_config)
    model_type = fields.pop("model_type")
    tokenizer = word_tokenizer(words, STYLE_OF.get(model_type, "llama"))
    ids = {role: tokenizer.convert_tokens_to_ids(getattr(tokenizer, role))
           for role in ("bos_token", "eos_token", "pad_token") if getattr(tokenizer, role) is not None}
    fields.setdefault("vocab_size", len(tokenizer) + extra_rows)
    if ids.get("pad_token") in (ids.get("bos_token"), ids.get("eos_token")):
        del ids["pad_token"]  # as in Qwen's config: a pad id would zero that shared row at init
    for role, token_id in ids.items():
        fields.setdefault(role.replace("_token", "_token_id"), token_id)
    config = AutoConfig.for_model(model_type, **fields)
    model = (AutoModelForMaskedLM if model_type == "bert" else AutoModelForCausalLM).from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
