"""Cross-attention maps of the fusion decoder: for each text position, where in the image its
cross-attention looks, and the same per generated word.

Convention: position t of the decoder predicts token t+1, so the map *of token i* is the
attention row of position i-1 (the query that produced it). Words are groups of tokenizer
pieces (sentencepiece "▁", GPT-2 "Ġ" and WordPiece "##" conventions); a word's map is the
mean of its tokens' maps.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError


def _as_indices(chosen, count: int, what: str) -> list[int]:
    if chosen is None:
        return list(range(count))
    out = []
    for i in chosen:
        if not -count <= int(i) < count:
            raise UserError(f"{what} {list(chosen)}: {i} is out of range, the model has {count}")
        out.append(int(i) % count)
    return out


@torch.no_grad()
def cross_attention_maps(model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None, layers=None, heads=None,
                         image_views: torch.Tensor | None = None,
                         image_is_prior: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, h, w): softmax attention of every text position over the image patches, averaged
    over the chosen fusion `layers` and `heads` (indices; default all, negative counts from the end).
    For studies (pixel_values (B, K, C, S, S) with image_views, image_is_prior): (B, T, K, h, w),
    one map per image slot, summing to at most 1 over all of them (empty slots get 0).

    One teacher-forced forward pass of a MedVLMForConditionalGeneration; hooks on each fusion
    block's cross-attention recompute its weights (`CrossAttention.attention_weights`), so the
    training/generation path (SDPA) stays as it is.
    """
    cross_attentions = model.cross_attention_layers()
    layer_ids = _as_indices(layers, len(cross_attentions), "layers")
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        cross_attentions[i].register_forward_hook(
            lambda module, args, output, i=i: captured.__setitem__(i, module.attention_weights(*_cross_args(args))))
        for i in layer_ids
    ]
    was_training = model.training
    model.eval()
    try:
        model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
              image_views=image_views, image_is_prior=image_is_prior)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    weights = torch.stack([captured[i] for i in layer_ids], dim=1)  # (B, layers, heads, T, N)
    head_ids = _as_indices(heads, weights.shape[2], "heads")
    maps = weights[:, :, head_ids].mean(dim=(1, 2))  # (B, T, N), or (B, T, K * N) for studies
    if pixel_values.dim() == 5:
        return _grid(maps.unflatten(-1, (pixel_values.shape[1], -1)))  # (B, T, K, h, w)
    return _grid(maps)  # (B, T, h, w)


def _cross_args(args: tuple) -> tuple:
    """A cross-attention call's positional (x, image_kv[, image_mask]) -> the arguments of
    `attention_weights`: (x, image_kv, with_null=False, image_mask)."""
    x, image_kv, *rest = args
    return x, image_kv, False, (rest[0] if rest else None)


def _grid(maps: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (..., h, w) on a square grid of image tokens."""
    side = math.isqrt(maps.shape[-1])
    if side * side != maps.shape[-1]:
        raise ValueError(f"{maps.shape[-1]} image tokens do not form a square grid")
    return maps.reshape(*maps.shape[:-1], side, side)


def cross_attention_relevance(model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                              targets: list[list[int]], layers=None, heads=None) -> torch.Tensor:
    """(G, h, w) gradient-weighted cross-attention (Chefer et al., 2021) of one sequence: for each
    group of target token positions, (dL/dA * A)^+ at the rows that predicted them, where L is the
    group's summed log-probability and A the cross-attention weights, averaged over the chosen
    layers, heads and rows.

    Raw attention also goes to "sink" patches that carry no evidence (they act as a no-op); the
    gradient keeps only attention that changes the prediction. pixel_values: (1, C, S, S);
    input_ids: (1, T); targets: positions p >= 1 of tokens to explain (row p - 1 predicted them).
    """
    cross_attentions = model.cross_attention_layers()
    layer_ids = _as_indices(layers, len(cross_attentions), "layers")
    kept: dict[int, torch.Tensor] = {}

    def explicit_attention(i):
        def hook(module, args, output):  # the same output as SDPA, through weights we can differentiate
            x, image_kv, _, image_mask = _cross_args(args)
            weights = module.attention_weights(x, image_kv, True, image_mask)  # (B, heads, T, N [+ null])
            kept[i] = weights
            B, T, D = x.shape
            return module.proj((weights @ image_kv[1]).transpose(1, 2).reshape(B, T, D))
        return hook

    hooks = [cross_attentions[i].register_forward_hook(explicit_attention(i)) for i in layer_ids]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logprobs = model(input_ids=input_ids, pixel_values=pixel_values).logits.float().log_softmax(-1)
            weights = [kept[i] for i in layer_ids]
            head_ids = _as_indices(heads, weights[0].shape[1], "heads")
            patches = weights[0].shape[-1] - (cross_attentions[layer_ids[0]].null_kv is not None)  # null slot last
            maps = []
            for group in targets:
                rows = [p - 1 for p in group]
                score = logprobs[0, rows, input_ids[0, group]].sum()
                grads = torch.autograd.grad(score, weights, retain_graph=True)
                relevance = torch.stack([(g * w).clamp(min=0)[0][head_ids][:, rows, :patches]
                                         for g, w in zip(grads, weights)])  # (layers, heads, rows, N)
                maps.append(relevance.mean(dim=(0, 1, 2)).detach())
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return _grid(torch.stack(maps)) if maps else torch.zeros(0)


WEIGHTINGS = ("raw", "gradient")


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise UserError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def _starts_word(piece: str, wordpiece: bool) -> bool:
    return not piece.startswith("##") if wordpiece else piece.startswith(("▁", "Ġ"))


def _clean(piece: str) -> str:
    return piece.removeprefix("##").lstrip("▁Ġ")


def word_positions(tokenizer, token_ids, start: int = 1) -> list[tuple[str, list[int]]]:
    """[(word, token positions)] for the words of `token_ids[start:]`, special tokens skipped."""
    token_ids = [int(t) for t in token_ids]
    pieces = tokenizer.convert_ids_to_tokens(token_ids)
    special = set(tokenizer.all_special_ids)
    wordpiece = type(getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)).__name__ == "WordPiece"
    words: list[tuple[str, list[int]]] = []
    for position in range(max(start, 1), len(token_ids)):
        if token_ids[position] in special:
            continue
        piece = pieces[position]
        if not words or _starts_word(piece, wordpiece):
            words.append((_clean(piece), [position]))
        else:
            words[-1] = (words[-1][0] + _clean(piece), words[-1][1] + [position])
    return [(word, positions) for word, positions in words if word]


def word_maps(tokenizer, token_ids, maps: torch.Tensor, start: int = 1) -> list[tuple[str, torch.Tensor]]:
    """[(word, (h, w) map)] for the words of `token_ids[start:]` (special tokens skipped).

    token_ids: (T,) one sequence; maps: (T, h, w) or (T - 1, h, w) from `cross_attention_maps`
    (the last row is never used); start: the first position to explain (1 after BOS for a
    report; the prompt length for a VQA answer), >= 1.
    """
    # the map of token i is the attention of the position that predicted it, i - 1
    return [(word, maps[[p - 1 for p in positions]].mean(dim=0))
            for word, positions in word_positions(tokenizer, token_ids, start)]


@torch.no_grad()
def explain_generation(model, processor, image, question: str | None = None, layers=None, heads=None,
                       max_new_tokens: int = 96, weighting: str = "raw") -> dict:
    """Generate a report (or, with `question`, a VQA answer) for one image and return
    {"text", "words": [(word, (h, w) map)], "pixels": (C, S, S) model input}; the maps are raw
    attention (`weighting="raw"`) or gradient-weighted (`"gradient"`, `cross_attention_relevance`)."""
    check_weighting(weighting)
    device = next(model.parameters()).device
    pixels = processor.images([image]).to(device)  # (1, C, S, S)
    positions = model.max_text_positions() or 10**9
    # a model trained to write after the prior's report gets an empty one (no prior here)
    if question or processor.prior_report:
        prompt = {k: v.to(device) for k, v in processor.prompts([question or ""], reserve=max_new_tokens).items()}
        start = prompt["input_ids"].shape[1]
        sequences = model.generate(pixel_values=pixels, **prompt, do_sample=False,
                                   max_new_tokens=max(1, min(max_new_tokens, positions - start)))
    else:
        start = 1
        sequences = model.generate(pixel_values=pixels, do_sample=False,
                                   max_new_tokens=max(1, min(max_new_tokens, positions - start)))
    text = processor.decode(sequences, skip_prompt=start)[0]
    if weighting == "gradient":
        words = word_positions(processor.tokenizer, sequences[0], start)
        # generate() returns inference-mode tensors; a clone can enter autograd
        maps = cross_attention_relevance(model, pixels, sequences.clone(), [p for _, p in words], layers, heads)
        return {"text": text, "words": [(w, m) for (w, _), m in zip(words, maps)], "pixels": pixels[0].cpu()}
    words = generated_word_maps(model, processor.tokenizer, pixels, sequences, start, layers, heads)
    return {"text": text, "words": words, "pixels": pixels[0].cpu()}


@torch.no_grad()
def generated_word_maps(model, tokenizer, pixels: torch.Tensor, sequences: torch.Tensor, start: int = 1,
                        layers=None, heads=None) -> list[tuple[str, torch.Tensor]]:
    """[(word, (h, w) raw attention map)] of a generated sequence (1, T) for its image (1, C, S, S)."""
    # the last token's own row predicts nothing, so the pass stops one short (and within the positions)
    inputs = sequences[:, :-1]
    maps = cross_attention_maps(model, pixels, inputs, torch.ones_like(inputs), layers, heads)[0]
    return word_maps(tokenizer, sequences[0], maps, start)
