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

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .privacy import privacy_mods
from .site import (config_from_json, quiet_progress_bars, site_dir, site_name, site_overrides, site_records,
                   with_tokenizer)

app = ClientApp(mods=[privacy_mods])
SECURE_CONFIG = "fitins.config"  # the legacy FitIns layout SecAgg+ hands the train handler


def _site(config, context: Context):
    """(the site's RunConfig, its name, its folder) for a message's config."""
    quiet_progress_bars()
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
    cfg, name, _ = _site(msg.content["config"], context)
    counts = word_counts(site_records(cfg, "train"), cfg.federated.min_token_count)
    words = sorted(counts)
    reply = ConfigRecord({"words": words, "counts": [counts[w] for w in words], "site": name})
    return Message(RecordDict({"counts": reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from .local_training import train_round

    if SECURE_CONFIG in msg.content.config_records:  # SecAgg+'s masked-vector stage speaks Flower's legacy layout
        return _secure_train(msg, context)
    config = msg.content["config"]
    cfg, name, folder = _site(config, context)
    print(f"[medvlm] {name}: round {int(config['server-round'])}, {cfg.federated.local_steps} local steps")
    arrays, metrics = train_round(cfg, _processor(cfg), msg.content["arrays"], site_records(cfg, "train"), folder,
                                  int(config["server-round"]), float(config["learning-rate"]),
                                  float(config.get("proximal-mu", 0.0)), cfg.federated.keep_last)
    if cfg.federated.dp_noise_multiplier > 0:  # Flower's privacy accountant needs equal weights
        metrics["uniform-weight"] = 1
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics), "site": ConfigRecord({"name": name})})
    return Message(content, reply_to=msg)


def _secure_train(msg: Message, context: Context) -> Message:
    """A round under SecAgg+: the global weights arrive as legacy FitIns (a list in the
    travelling order), the reply is the site's update for secaggplus_mod to mask."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from .local_training import train_round
    from .secure_aggregation import site_update
    from .weights import names_in_order

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    cfg, name, folder = _site(fitins.config, context)
    processor, records = _processor(cfg), site_records(cfg, "train")
    current = parameters_to_ndarrays(fitins.parameters)
    arrays = ArrayRecord({n: Array(a) for n, a in zip(names_in_order(cfg, processor), current, strict=True)})
    print(f"[medvlm] {name}: round {int(fitins.config['server-round'])} (secure aggregation)")
    local, _ = train_round(cfg, processor, arrays, records, folder, int(fitins.config["server-round"]),
                           float(fitins.config["learning-rate"]), 0.0, cfg.federated.keep_last)
    weight = max(1, min(len(records), int(cfg.federated.secagg_max_weight)))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(site_update(current, local)), weight, {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from .local_training import validation_losses

    cfg, name, _ = _site(msg.content["config"], context)
    records = site_records(cfg, "validation")
    metrics = {**validation_losses(cfg, _processor(cfg), msg.content["arrays"], records), "num-examples": len(records)}
    if cfg.federated.dp_noise_multiplier > 0:
        metrics["uniform-weight"] = 1
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": name})})
    return Message(content, reply_to=msg)



