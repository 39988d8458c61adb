"""The Flower ClientApp: what runs at each site.

Three messages come from the server (medvlm.federated.server), each with one ConfigRecord
"config" holding the run config as JSON ("run-config"):
- query: the site's word counts for the federated tokenizer (words seen fewer than
  `federated.min_token_count` times are left out; no text leaves the site);
- train: local training from the global weights ("arrays") with the round's "learning-rate"
  (and FedProx's "proximal-mu"); replies with the new weights and the training metrics;
- evaluate: the global weights' losses on the site's validation split.
Under differential privacy the server's "clipping_norm" makes Flower's `fixedclipping_mod` clip
the update; under secure aggregation Flower's `secaggplus_mod` masks it (`privacy_mods`).
"""

from collections import Counter

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .privacy import privacy_mods
from .site import (config_from_json, quiet_progress_bars, site_dir, site_name, site_overrides, site_records,
                   with_tokenizer)

app = ClientApp(mods=[privacy_mods])


def _site(msg: Message, context: Context):
    """(the site's RunConfig, its name, its folder) for this message."""
    quiet_progress_bars()
    config = msg.content["config"]
    node = dict(context.node_config)
    server_cfg = config_from_json(str(config["run-config"]))
    cfg = config_from_json(str(config["run-config"]), site_overrides(node, server_cfg))
    name = site_name(node, cfg)
    folder = site_dir(node, cfg, name)
    tokenizer = config.get("tokenizer", b"")
    return with_tokenizer(cfg, bytes(tokenizer) if tokenizer else b"", folder / "tokenizer"), name, folder


def _processor(cfg):
    from medvlm.runs import build_processor

    return build_processor(cfg, [])


def word_counts(records: list[dict], min_count: int) -> Counter:
    """Case-folded whitespace words of the reports (and VQA questions), those seen at least `min_count` times."""
    counts = Counter(word for r in records for text in (r.get("text"), r.get("question")) if text
                     for word in text.casefold().split())
    return Counter({word: n for word, n in counts.items() if n >= min_count})


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg, name, _ = _site(msg, context)
    counts = word_counts(site_records(cfg, "train"), cfg.federated.min_token_count)
    words = sorted(counts)
    reply = ConfigRecord({"words": words, "counts": [counts[w] for w in words], "site": name})
    return Message(RecordDict({"counts": reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from .local_training import train_round

    cfg, name, folder = _site(msg, context)
    config = msg.content["config"]
    print(f"[medvlm] {name}: round {int(config['server-round'])}, {cfg.federated.local_steps} local steps")
    arrays, metrics = train_round(cfg, _processor(cfg), msg.content["arrays"], site_records(cfg, "train"), folder,
                                  int(config["server-round"]), float(config["learning-rate"]),
                                  float(config.get("proximal-mu", 0.0)), cfg.federated.keep_last)
    if cfg.federated.dp_noise_multiplier > 0:  # Flower's privacy accountant needs equal weights
        metrics["uniform-weight"] = 1
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics), "site": ConfigRecord({"name": name})})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from .local_training import validation_losses

    cfg, name, _ = _site(msg, context)
    records = site_records(cfg, "validation")
    metrics = {**validation_losses(cfg, _processor(cfg), msg.content["arrays"], records), "num-examples": len(records)}
    if cfg.federated.dp_noise_multiplier > 0:
        metrics["uniform-weight"] = 1
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": name})})
    return Message(content, reply_to=msg)



