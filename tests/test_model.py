import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, GPT2Config, GPT2Model

from medvlm.errors import UserError
from medvlm.modeling import MedVLMConfig, MedVLMForConditionalGeneration, MedVLMModel
from tiny import VOCAB, spatial_config, tiny_config


def batch(B=3, T=10, pad_last=3):
    torch.manual_seed(0)
    ids = torch.randint(3, VOCAB, (B, T))
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[-1, T - pad_last:] = 0
    ids[-1, T - pad_last:] = 0
    ids[torch.arange(B), mask.sum(1) - 1] = 2
    labels = ids.masked_fill(mask == 0, -100)
    return torch.randn(B, 1, 32, 32), ids, mask, labels


@pytest.mark.parametrize("text_type, vision", [("gpt2", "vit"), ("bert", "vit"), ("gpt2", "densenet121")])
def test_shapes_losses_and_every_parameter_gets_a_gradient(text_type, vision):
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(tiny_config(text_type, vision))
    pixels, ids, mask, labels = batch()
    if vision != "vit":  # a stride-32 CNN needs 64 px for 2 x 2 tokens: over one token, attention
        pixels = F.interpolate(pixels, scale_factor=2)  # is constant and its queries get no gradient
    out = model(ids, pixels, mask, labels=labels)
    assert out.logits is None  # with labels the caption loss never forms the logits
    with torch.no_grad():  # same dropout draws for both
        torch.manual_seed(1)
        chunked = model(ids, pixels, mask, labels=labels).caption_loss
        torch.manual_seed(1)
        logits = model(ids, pixels, mask).logits
    torch.testing.assert_close(chunked, F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100))
    assert out.image_embeds.shape == out.text_embeds.shape == (3, 16)
    for name in ("loss", "caption_loss", "contrastive_loss"):
        assert torch.isfinite(out[name]), name
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    # one image per row carries no view or prior: those are trained on studies (test_study_model)
    assert sorted(no_grad) == ["model.prior_embedding", "model.view_embeddings.weight"]


def test_text_tower_is_causal():
    model = MedVLMForConditionalGeneration(tiny_config("bert")).eval()
    pixels, ids, mask, _ = batch(pad_last=0)
    changed = ids.clone()
    changed[:, 6:] = 5
    a = model(ids, pixels, mask).logits
    b = model(changed, pixels, mask).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])  # the future does not leak into earlier positions


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = MedVLMForConditionalGeneration(tiny_config()).eval()
    pixels, ids, mask, _ = batch()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, MedVLMConfig) and config.vision == model.config.vision
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, MedVLMForConditionalGeneration)
    torch.testing.assert_close(model(ids, pixels, mask).logits, reloaded(ids, pixels, mask).logits, rtol=0, atol=0)
    assert isinstance(AutoModel.from_pretrained(tmp_path), MedVLMModel)


@pytest.mark.parametrize("text_type", ["gpt2", "bert"])
@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_cached_and_uncached_greedy_generation_agree(text_type, cache_implementation):
    torch.manual_seed(1)
    model = MedVLMForConditionalGeneration(tiny_config(text_type)).eval()
    pixels = torch.randn(2, 1, 32, 32)
    kwargs = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)
    cached = model.generate(pixels, cache_implementation=cache_implementation, **kwargs)
    uncached = model.generate(pixels, use_cache=False, **kwargs)
    assert cached.shape == (2, 21)
    assert torch.equal(cached, uncached)


def test_generate_runs_entirely_in_inference_mode():
    # the image encoding inside generate included: with autograd on it would record the vision
    # tower's graph and hold its activations (a 3.6x peak-memory regression once went unnoticed)
    model = MedVLMForConditionalGeneration(tiny_config("gpt2")).eval()
    seen = []
    model.model.vision.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    out = model.generate(torch.randn(2, 1, 32, 32), max_new_tokens=3, do_sample=False)
    assert seen == [True] and out.is_inference()


@pytest.mark.parametrize("text_type", ["gpt2", "bert"])
def test_text_tower_on_eager_attention_gives_the_same_outputs(text_type):
    # the shared SDPA-form mask goes to an SDPA tower only; an eager tower builds its own
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(tiny_config(text_type)).eval()
    eager_cfg = tiny_config(text_type)
    eager_cfg.text["attn_implementation"] = "eager"
    eager = MedVLMForConditionalGeneration(eager_cfg).eval()
    eager.load_state_dict(model.state_dict())
    assert eager.model.text.model.config._attn_implementation == "eager"
    ids = torch.randint(3, VOCAB, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding (training)
    mask[2, :3] = 0  # left padding (VQA prompts)
    pixels = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        expected, got = model(ids, pixels, mask).logits, eager(ids, pixels, mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


def test_static_cache_beam_search_matches_dynamic():
    torch.manual_seed(3)
    model = MedVLMForConditionalGeneration(tiny_config()).eval()
    pixels = torch.randn(2, 1, 32, 32)
    kwargs = dict(max_new_tokens=10, min_new_tokens=10, num_beams=3)
    assert torch.equal(model.generate(pixels, cache_implementation="static", **kwargs), model.generate(pixels, **kwargs))


def test_unknown_cache_implementation_is_a_clear_error():
    model = MedVLMForConditionalGeneration(tiny_config()).eval()
    with pytest.raises(ValueError, match="cache_implementation='offloaded'"):
        model.generate(torch.randn(1, 1, 32, 32), max_new_tokens=2, cache_implementation="offloaded")


@pytest.mark.slow
def test_compiled_static_decoding_matches_eager():
    # eval.compile_decoding=true: a static cache and a compiled decode step, on CPU too
    from medvlm.config import EvalConfig
    from medvlm.tasks.report_generation import generation_kwargs

    torch.manual_seed(4)
    model = MedVLMForConditionalGeneration(tiny_config()).eval()
    pixels = torch.randn(2, 1, 32, 32)
    compiled = model.generate(pixels, min_new_tokens=12,
                              **generation_kwargs(EvalConfig(max_new_tokens=12, compile_decoding=True)))
    assert hasattr(model, "_compiled_call")  # generate really took the compiled path
    eager = model.generate(pixels, min_new_tokens=12, **generation_kwargs(EvalConfig(max_new_tokens=12)))
    assert compiled.shape == (2, 13) and torch.equal(compiled, eager)


def test_beam_search_and_sampling_run_batched():
    model = MedVLMForConditionalGeneration(tiny_config()).eval()
    pixels = torch.randn(3, 1, 32, 32)
    beams = model.generate(pixels, max_new_tokens=8, num_beams=3, no_repeat_ngram_size=2)
    assert beams.shape[0] == 3
    sampled = model.generate(pixels, max_new_tokens=8, do_sample=True, top_k=5, top_p=0.9, temperature=0.8)
    assert sampled.shape[0] == 3


def test_image_features_are_computed_once_per_image(monkeypatch):
    model = MedVLMForConditionalGeneration(tiny_config()).eval()
    calls = []
    original = model.model.vision.forward
    monkeypatch.setattr(model.model.vision, "forward", lambda x: calls.append(len(x)) or original(x))
    model.generate(torch.randn(2, 1, 32, 32), max_new_tokens=6, num_beams=3)
    assert calls == [2]  # one vision pass for two images, not one per step or per beam


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_left_padded_prompts_generate_like_single_prompts(cache_implementation):
    torch.manual_seed(2)
    model = MedVLMForConditionalGeneration(tiny_config()).eval()
    pixels = torch.randn(2, 1, 32, 32)
    short, long = [1, 7, 9, 4], [1, 7, 9, 11, 12, 4]
    ids = torch.tensor([[0, 0] + short, long])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, cache_implementation=cache_implementation)
    together = model.generate(pixels, input_ids=ids, attention_mask=mask, **kwargs)
    alone = model.generate(pixels[:1], input_ids=torch.tensor([short]), **kwargs)
    assert together[0, -6:].tolist() == alone[0, -6:].tolist()


def test_towers_load_local_pretrained_weights(tmp_path):
    # a timm RGB checkpoint loads into a 1-channel tower (first conv adapted), no download
    rgb = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, embed_dim=32, depth=1,
                            num_heads=2, num_classes=0)
    save_file(rgb.state_dict(), tmp_path / "vit.safetensors")
    text_dir = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=VOCAB)).save_pretrained(text_dir)

    cfg = tiny_config()
    cfg.vision["pretrained_path"] = str(tmp_path / "vit.safetensors")
    cfg.text["pretrained_path"] = str(text_dir)
    model = MedVLMForConditionalGeneration(cfg)
    model.load_pretrained_towers()
    expected = rgb.state_dict()["patch_embed.proj.weight"].sum(dim=1, keepdim=True)
    loaded = model.model.vision.backbone.patch_embed.proj.weight
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-6)
    source = GPT2Model.from_pretrained(text_dir)
    torch.testing.assert_close(model.model.text.model.wte.weight, source.wte.weight)


def test_missing_weight_file_is_a_clear_error(tmp_path):
    cfg = tiny_config()
    cfg.vision["pretrained_path"] = str(tmp_path / "nope.safetensors")
    model = MedVLMForConditionalGeneration(cfg)
    with pytest.raises(UserError, match="model.vision.pretrained_path=.*nope.safetensors.*not found"):
        model.load_pretrained_towers()


def test_optimizer_groups_exclude_biases_and_norms_from_decay():
    model = MedVLMForConditionalGeneration(tiny_config())
    decay, no_decay = model.optimizer_groups(0.1)
    learnt_tokens = {id(model.model.view_embeddings.weight)}  # a table of learnt tokens, not a map: no decay
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim < 2 or id(p) in learnt_tokens for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    assert sum(map(len, (decay["params"], no_decay["params"]))) == len(list(model.parameters()))


def test_cnn_tokens_from_a_finer_stage_and_the_null_slot_train_and_reload(tmp_path):
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(spatial_config())
    pixels, ids, mask, labels = batch()
    tokens, pooled = model.model.vision(pixels)
    assert tokens.shape == (3, 4, 152) and pooled.shape == (3, 368)  # 32 px / 16 = 2 x 2 from stage s3
    kv = model.model.fusion[0].cross_attn.image_keys_values(model.model.encode_image(pixels)[0])
    assert kv.shape[3] == 4 + 1  # the patches, then the null slot
    out = model(ids, pixels, mask, labels=labels)
    out.loss.backward()
    assert all(float(block.cross_attn.null_kv.grad.abs().sum()) > 0 for block in model.model.fusion)
    assert all(float(block.cross_attn.log_scale.grad.abs().sum()) > 0 for block in model.model.fusion)
    assert model.model.image_positions.shape == (1, 4, 32) and float(model.model.image_positions.grad.abs().sum()) > 0
    decay, no_decay = model.optimizer_groups(0.1)
    cross = model.model.fusion[0].cross_attn
    for learnt_token in (cross.null_kv, cross.log_scale, model.model.image_positions):
        assert any(p is learnt_token for p in no_decay["params"])
    model.eval().save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert reloaded.config.vision["token_reduction"] == 16 and reloaded.config.fusion_null_slot
    assert reloaded.config.fusion_image_positions
    torch.testing.assert_close(model(ids, pixels, mask).logits, reloaded(ids, pixels, mask).logits, rtol=0, atol=0)
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(pixels, **kwargs), model.generate(pixels, use_cache=False, **kwargs))


@pytest.mark.parametrize("pooling", [True, "mean", "max"])
def test_pool_tokens_embeds_a_pool_of_the_tokens_cross_attention_reads(tmp_path, pooling):
    config = spatial_config()
    config.vision["pool_tokens"] = pooling
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(config)
    pixels, ids, mask, labels = batch()
    tokens, pooled = model.model.vision(pixels)
    assert tokens.shape == (3, 4, 152) and pooled.shape == (3, 152)
    torch.testing.assert_close(pooled, tokens.amax(dim=1) if pooling == "max" else tokens.mean(dim=1))
    # the stage after the token stage is pruned, and every vision weight left gets a gradient
    assert not any(name.startswith("backbone.s4.") for name, _ in model.model.vision.named_parameters())
    model(ids, pixels, mask, labels=labels).loss.backward()
    assert all(p.grad is not None for p in model.model.vision.parameters())
    model.eval().save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert reloaded.config.vision["pool_tokens"]
    torch.testing.assert_close(model.get_image_features(pixels), reloaded.get_image_features(pixels), rtol=0, atol=0)


def test_unknown_pool_tokens_is_a_clear_error():
    config = spatial_config()
    config.vision["pool_tokens"] = "median"
    with pytest.raises(ValueError, match="vision.pool_tokens='median'"):
        MedVLMForConditionalGeneration(config)


def test_token_reduction_is_for_cnns_only():
    config = tiny_config()
    config.vision["token_reduction"] = 16
    with pytest.raises(ValueError, match="token_reduction needs a CNN"):
        MedVLMForConditionalGeneration(MedVLMConfig(**config.to_dict()))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    text = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # no dropout: runs comparable
    pixels, ids, mask, labels = batch()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = MedVLMForConditionalGeneration(tiny_config(text=text)).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(block.gradient_checkpointing for block in model.model.fusion)
            assert model.model.vision.backbone.grad_checkpointing
        loss = model(ids, pixels, mask, labels=labels).loss
        loss.backward()
        grads.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for plain, recomputed in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(plain, recomputed, rtol=1e-4, atol=1e-6)


def test_public_methods_give_the_inner_model_s_features_and_towers():
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(tiny_config(fusion_image_positions=True)).eval()
    pixels, ids, mask, _ = batch()
    with torch.no_grad():
        out = model(ids, pixels, mask)
        image, text = model.get_image_features(pixels), model.get_text_features(ids, mask)
    assert image.shape == text.shape == (3, 16)
    torch.testing.assert_close(image, out.image_embeds, rtol=0, atol=0)
    torch.testing.assert_close(text, out.text_embeds, rtol=0, atol=0)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))
    assert len(model.cross_attention_layers()) == model.config.fusion_layers
    assert model.max_text_positions() == 64
    assert model.get_submodule(model.vision_backbone_name) is model.vision_tower().backbone
    names = dict(model.named_modules())
    for prefix, suffixes in model.lora_targets().values():
        assert prefix in names and any(n.startswith(prefix) and n.endswith(suffixes) for n in names)
    towers = model.tower_modules()
    owned = {id(p) for group in towers.values() for item in group
             for p in ([item] if isinstance(item, torch.nn.Parameter) else item.parameters())}
    rest = [n for n, p in model.named_parameters() if id(p) not in owned]
    assert sorted(rest) == ["lm_bias", "model.logit_scale"]  # the head bias and the temperature: no tower's


@pytest.mark.parametrize("vision, message", [
    ({"model_name": "vit_nonexistent_224"}, "model.vision.model_name='vit_nonexistent_224': not a timm model"),
    ({"timm_kwargs": {"no_such_argument": 1}}, r"model.vision.timm_kwargs=\{'no_such_argument': 1\}"),
])
def test_bad_vision_settings_are_user_errors_naming_the_key(vision, message):
    config = tiny_config()
    config.vision.update(vision)
    with pytest.raises(UserError, match=message):
        MedVLMForConditionalGeneration(config)


def test_bad_text_tower_path_is_a_user_error(tmp_path):
    cfg = tiny_config()
    cfg.text["pretrained_path"] = str(tmp_path / "missing")
    model = MedVLMForConditionalGeneration(cfg)
    with pytest.raises(UserError, match="model.text.pretrained_path="):
        model.load_pretrained_towers()
