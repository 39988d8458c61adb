"""The federated pieces without Flower's engines: the tokenizer from word counts, the weights
that travel, FedProx's proximal term, the round's learning rate, the strategies and their state."""

import copy
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from federated_tiny import write_config
from medvlm.config import load_config
from medvlm.data.synthetic import synthetic_records
from medvlm.errors import UserError
from medvlm.federated.client_app import word_counts
from medvlm.federated.local_training import site_model, train_round
from medvlm.federated.server import round_learning_rate
from medvlm.federated.site import config_from_json, site_overrides, site_records, with_tokenizer
from medvlm.federated.strategies import build_strategy, restore_strategy_state, strategy_state
from medvlm.federated.weights import load_arrays, to_arrays, travelling_tensors
from medvlm.runs import build_processor
from medvlm.tokenization import SPM_FILE, report_tokenizer_from_counts, train_report_tokenizer


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fed")
    cfg = load_config(write_config(folder, folder / "run"))
    spm_dir = folder / "tokenizer"
    texts = [r["text"] for r in synthetic_records(90, image_size=32)]
    report_tokenizer_from_counts(Counter(w for t in texts for w in t.casefold().split()), spm_dir, 200, 64)
    cfg = with_tokenizer(cfg, (spm_dir / SPM_FILE).read_bytes(), folder / "site-tokenizer")
    return cfg, build_processor(cfg, [])


def test_a_tokenizer_from_word_counts_segments_like_one_from_the_texts(tmp_path):
    texts = [r["text"] for r in synthetic_records(300, image_size=32)]
    from_texts = train_report_tokenizer(texts, tmp_path / "texts", 300)
    from_counts = report_tokenizer_from_counts(word_counts([{"text": t} for t in texts], 1), tmp_path / "counts", 300)
    lengths = [sum(len(tok(t)["input_ids"]) for t in texts) for tok in (from_texts, from_counts)]
    assert abs(lengths[0] - lengths[1]) / lengths[0] < 0.03
    assert from_counts.decode(from_counts(texts[0])["input_ids"], skip_special_tokens=True) == texts[0].casefold()


def test_a_site_sends_no_word_it_saw_fewer_than_min_count_times():
    counts = word_counts([{"text": "Effusion effusion Smith"}, {"text": "effusion", "question": "Smith?"}], 2)
    assert counts == Counter({"effusion": 3})


def test_the_batch_norm_statistics_travel_with_the_trainable_weights_and_frozen_towers_do_not(federation):
    cfg, processor = federation
    model = site_model(cfg, processor, None)
    names = list(travelling_tensors(model))
    assert any(n.endswith("running_var") for n in names) and any(".vision." in n for n in names)
    frozen = copy.deepcopy(cfg)
    frozen.train.freeze = ["vision"]
    frozen_names = list(travelling_tensors(site_model(frozen, processor, None)))
    assert frozen_names and not any(".vision." in n for n in frozen_names)


def test_global_weights_of_another_model_are_refused_naming_the_tensor(federation):
    cfg, processor = federation
    model = site_model(cfg, processor, None)
    arrays = to_arrays(model)
    other = copy.deepcopy(cfg)
    other.train.freeze = ["text"]
    with pytest.raises(UserError, match="do not fit this site's model"):
        load_arrays(site_model(other, processor, None), arrays)
    twin = site_model(cfg, processor, arrays)
    assert all(torch.equal(a, b) for a, b in zip(travelling_tensors(model).values(), travelling_tensors(twin).values()))


def test_fedprox_with_a_large_mu_keeps_the_site_weights_near_the_global_ones(federation, tmp_path):
    cfg, processor = federation
    site = config_from_json(__import__("json").dumps(cfg.to_dict()), site_overrides({"partition-id": 1}, cfg))
    records = site_records(site, "train")
    arrays = to_arrays(site_model(cfg, processor, None))
    site.federated.local_steps = 10
    drift = {}
    for mu in (0.0, 1000.0):
        _, metrics = train_round(site, processor, arrays, records, tmp_path / f"mu{mu}", 1, 5e-3, mu)
        drift[mu] = metrics["update-norm"]
    assert drift[1000.0] < 0.2 * drift[0.0], drift


def test_a_round_trains_at_the_rate_of_its_first_step_on_the_warmup_and_cosine(federation):
    cfg = copy.deepcopy(federation[0])
    cfg.train.warmup_steps, cfg.federated.rounds, cfg.federated.local_steps = 0, 4, 10
    rates = [round_learning_rate(cfg, r) for r in range(1, 5)]
    assert rates[0] == pytest.approx(cfg.train.learning_rate) and rates == sorted(rates, reverse=True)


def test_a_site_must_say_where_its_data_is(federation):
    cfg = federation[0]
    with pytest.raises(UserError, match="does not say where its data is"):
        site_overrides({}, cfg)
    with pytest.raises(UserError, match="may only set its own data settings"):
        site_overrides({"overrides": "train.max_steps=5"}, cfg)
    assert site_overrides({"overrides": "data.root=/srv/cxr data.dataset=csv"}, cfg) == ["data.root=/srv/cxr",
                                                                                         "data.dataset=csv"]


def test_fedadam_keeps_its_moments_across_a_server_restart(federation, tmp_path):
    cfg = copy.deepcopy(federation[0])
    cfg.federated.strategy = "fedadam"
    strategy = build_strategy(cfg, 3)
    strategy.m_t = {"w": np.ones(3, dtype=np.float32)}
    strategy.v_t = {"w": np.full(3, 2.0, dtype=np.float32)}
    np.savez(tmp_path / "opt.npz", **strategy_state(strategy))
    restarted = build_strategy(cfg, 3)
    restore_strategy_state(restarted, tmp_path / "opt.npz", None)
    assert np.array_equal(restarted.m_t["w"], strategy.m_t["w"]) and np.array_equal(restarted.v_t["w"], strategy.v_t["w"])


def test_differential_privacy_wraps_the_strategy_with_flowers_accountant(federation):
    cfg = copy.deepcopy(federation[0])
    cfg.federated.dp_noise_multiplier, cfg.federated.dp_clipping_norm = 1.0, 0.5
    strategy = build_strategy(cfg, 3)
    assert strategy.accountant is not None and strategy.num_sampled_clients == 3
    cfg.federated.strategy = "fedadam"  # Flower accounts for FedAvg's aggregation only: no epsilon claimed
    assert build_strategy(cfg, 3).accountant is None


def test_the_language_model_tokenizer_needs_a_pretrained_language_model(federation):
    from medvlm.federated.server import federated_tokenizer

    cfg = copy.deepcopy(federation[0])
    cfg.data.tokenizer, cfg.federated.tokenizer = None, "language_model"
    with pytest.raises(UserError, match="needs model.text.pretrained_path"):
        federated_tokenizer(None, cfg, None, [], "{}")


def test_the_comparison_table_names_a_baseline_not_trained_and_shows_intervals():
    from medvlm.federated.comparison import comparison_markdown

    records = [{"site": "icu"}, {"site": "icu"}, {"site": "general"}]
    scores = {"ce_micro_f1": [0.5, 0.4, 0.6], "bleu_4": [0.2, 0.1, 0.3]}
    table = {"federated": {"pooled": scores, "icu": scores, "general": scores},
             "local icu": {"missing": "not trained"}}
    text = comparison_markdown(table, records)
    assert "pooled (n=3) CE micro-F1" in text and "icu (n=2) CE micro-F1" in text
    assert "| federated | 0.500 [0.400, 0.600] | 0.200 [0.100, 0.300] |" in text
    assert text.splitlines()[-1].startswith("| local icu | not trained")


def test_a_site_that_fails_is_named_and_the_round_goes_on_with_the_others(capsys):
    from types import SimpleNamespace

    from medvlm.federated.server import _replies_or_error

    def reply(node, reason=None):
        return SimpleNamespace(has_error=lambda: reason is not None, error=SimpleNamespace(reason=reason),
                               metadata=SimpleNamespace(src_node_id=node))

    good = reply(1)
    assert _replies_or_error([good, reply(2, "data.root: /srv/cxr does not exist")], "round 3 training") == [good]
    assert "site node 2 failed: data.root: /srv/cxr does not exist" in capsys.readouterr().out
    with pytest.raises(UserError, match="no site succeeded .*disk full"):
        _replies_or_error([reply(2, "disk full")], "round 3 training")
