"""The server's side of a federation: the tokenizer round, then `federated.rounds` rounds of
train (on the sampled sites) -> aggregate (the strategy) -> evaluate (every site's validation
split), each round saved as a medvlm checkpoint the server resumes from after a crash.

Layout under `train.output_dir`:
    tokenizer/                  the federated tokenizer (trained from the sites' word counts)
    rounds/round-NNNN/          the global model after round N: a normal medvlm model directory
                                (from_pretrained, `medvlm eval`) plus global_arrays.safetensors
                                (what travels), federation_state.json (round, history, the DP
                                accountant) and server_optimizer.npz (FedAdam's moments)
    final/                      the global model after the last round
    federation.json             per round: the sites' losses, bytes moved, the privacy spent
"""

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from safetensors.torch import load_file, save_file

from medvlm.atomic_files import atomic_write_text
from medvlm.checkpointing import COMPLETE_MARKER, model_dir_problem, save_model_dir, write_atomically
from medvlm.config import RunConfig
from medvlm.engine import warmup_cosine_factor
from medvlm.errors import UserError

from .local_training import site_model
from .strategies import accountant_state, build_strategy, privacy_row, restore_strategy_state, strategy_state
from .weights import load_arrays, payload_bytes, valid_statistics

ROUNDS = "rounds"
STATE_FILE, ARRAYS_FILE, SERVER_OPTIMIZER_FILE = "federation_state.json", "global_arrays.safetensors", "server_optimizer.npz"
SUMMARY_FILE = "federation.json"
REPLY_TIMEOUT_S = 24 * 3600.0  # a site's round may take hours on real data


@dataclass
class FederationState:
    round: int = 0  # rounds done
    history: list = field(default_factory=list)  # one row per round (`_round_row`)
    accountant: dict | None = None  # the DP accountant's state_dict
    sites: list = field(default_factory=list)  # the site names seen


def round_learning_rate(cfg: RunConfig, server_round: int) -> float:
    """train.learning_rate on the warmup + cosine schedule over all rounds' local steps, held for a round."""
    t, f = cfg.train, cfg.federated
    step = (server_round - 1) * f.local_steps
    return t.learning_rate * warmup_cosine_factor(step, t.warmup_steps, f.rounds * f.local_steps, t.min_lr_ratio)


def wait_for_sites(grid, minimum: int, timeout_s: float = 3600.0) -> list[int]:
    """The node ids once at least `minimum` sites are connected."""
    start = time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() - start > timeout_s:
            raise UserError(f"federated.min_sites={minimum}: only {len(nodes)} site(s) connected within "
                            f"{timeout_s:.0f} s; start more SuperNodes or lower federated.min_sites")
        time.sleep(1.0)


def _replies_or_error(replies, what: str) -> list:
    """The replies without an error; each failed site is named; none at all is a UserError."""
    good = [reply for reply in replies if not reply.has_error()]
    for reply in replies:
        if reply.has_error():
            print(f"[medvlm] {what}: site node {reply.metadata.src_node_id} failed: {reply.error.reason}")
    if not good:
        reasons = "; ".join(str(r.error.reason) for r in replies if r.has_error())[:2000] or "no site replied"
        raise UserError(f"{what}: no site succeeded ({reasons})")
    return good


def federated_tokenizer(grid, cfg: RunConfig, out: Path, nodes: list[int], run_config: str) -> bytes:
    """The sentencepiece model trained on the sum of the sites' word counts (the bytes sent to
    every site), or b"" when the sites use the config's own tokenizer (data.tokenizer, or the
    pretrained LM's with federated.tokenizer=language_model)."""
    from medvlm.tokenization import SPM_FILE, report_tokenizer_from_counts

    if cfg.data.tokenizer:
        spm = Path(cfg.data.tokenizer) / SPM_FILE
        return spm.read_bytes() if spm.is_file() else b""
    if cfg.federated.tokenizer == "language_model":
        if not (cfg.model.values.get("text") or {}).get("pretrained_path"):
            raise UserError("federated.tokenizer=language_model needs model.text.pretrained_path (a pretrained LM, "
                            "present at every site, whose tokenizer they share)")
        return b""
    content = RecordDict({"config": ConfigRecord({"run-config": run_config})})
    messages = [Message(content, dst_node_id=node, message_type=MessageType.QUERY, group_id="tokenizer")
                for node in nodes]
    replies = _replies_or_error(list(grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_S)), "tokenizer round")
    counts = Counter()
    for reply in replies:
        record = reply.content["counts"]
        counts.update(dict(zip(record["words"], record["counts"])))
    report_tokenizer_from_counts(counts, out / "tokenizer", cfg.data.tokenizer_vocab_size, cfg.data.max_length)
    print(f"[medvlm] tokenizer: trained on the word counts of {len(replies)} sites ({len(counts)} distinct words "
          f"seen at least {cfg.federated.min_token_count} times at a site; no report text left a site)")
    return (out / "tokenizer" / SPM_FILE).read_bytes()


def newest_round(out: Path) -> Path | None:
    """The newest complete round checkpoint (its COMPLETE manifest matching), or None."""
    folders = sorted((p for p in (out / ROUNDS).glob("round-*") if p.is_dir()), reverse=True)
    for folder in folders:
        if (folder / COMPLETE_MARKER).is_file() and model_dir_problem(folder) is None:
            return folder
        print(f"[medvlm] resume: skipping {folder} (incomplete or damaged)")
    return None


def _site_metrics(replies) -> dict:
    """{site name: its MetricRecord as a dict}."""
    return {str(r.content["site"]["name"]): {k: v for k, v in r.content["metrics"].items()} for r in replies}


def _weighted_mean(per_site: dict, key: str) -> float | None:
    pairs = [(m[key], m.get("num-examples", 1)) for m in per_site.values() if key in m]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def _train_step(grid, strategy, server_round: int, arrays: ArrayRecord, config: ConfigRecord, secure=None):
    """(the aggregated arrays, what the round's row says of training): through the strategy, or
    through SecAgg+ (where the server sees no site's own metrics or update)."""
    if secure is not None:
        new_arrays = secure.train(server_round, arrays, config)
        size = payload_bytes(arrays)
        # the four SecAgg+ stages' messages are Flower's own: only the weights sent are counted here
        return new_arrays, {"train": {}, "failed_sites": 0, "bytes_to_sites": size * secure.sampled,
                            "bytes_from_sites": None, "secure_aggregation": "SecAgg+"}
    messages = list(strategy.configure_train(server_round, arrays, config, grid))
    replies = list(grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_S))
    trained = _replies_or_error(replies, f"round {server_round} training")
    new_arrays, _ = strategy.aggregate_train(server_round, trained)
    if new_arrays is None:
        raise UserError(f"round {server_round}: the strategy aggregated nothing (see the site errors above)")
    return new_arrays, {"train": _site_metrics(trained), "failed_sites": len(replies) - len(trained),
                        "bytes_to_sites": payload_bytes(arrays) * len(messages),
                        "bytes_from_sites": sum(payload_bytes(r.content["arrays"]) for r in trained)}


def run_round(grid, strategy, cfg: RunConfig, server_round: int, arrays: ArrayRecord, base: dict, secure=None):
    """(the new global arrays, the round's history row): train on the sampled sites, aggregate,
    and score the new global weights on every site's validation split."""
    start, lr = time.perf_counter(), round_learning_rate(cfg, server_round)
    config = ConfigRecord({**base, "server-round": server_round, "learning-rate": lr})
    new_arrays, training = _train_step(grid, strategy, server_round, arrays, config, secure)
    new_arrays = valid_statistics(new_arrays)
    evaluation = list(strategy.configure_evaluate(server_round, new_arrays, ConfigRecord(dict(base)), grid))
    validated = _replies_or_error(list(grid.send_and_receive(evaluation, timeout=REPLY_TIMEOUT_S)),
                                  f"round {server_round} evaluation")
    validation = _site_metrics(validated)
    row = {"round": server_round, "learning_rate": lr, **training, "validation": validation,
           "val_loss": _weighted_mean(validation, "val_loss"), "seconds": time.perf_counter() - start}
    row["bytes_to_sites"] += payload_bytes(new_arrays) * len(evaluation)
    return new_arrays, row


def _back(row: dict) -> str:
    return "masked updates" if row["bytes_from_sites"] is None else f"{row['bytes_from_sites'] / 1e6:.1f} MB"


def _print_row(row: dict, rounds: int) -> None:
    losses = ", ".join(f"{site} {m.get('val_loss', float('nan')):.3f}" for site, m in row["validation"].items())
    print(f"[medvlm] round {row['round']}/{rounds}: val_loss {row['val_loss']:.4f} ({losses}); "
          f"{row['bytes_to_sites'] / 1e6:.1f} MB to the sites, {_back(row)} back; "
          f"{row['seconds']:.0f} s")


def save_round(out: Path, model, processor, cfg: RunConfig, arrays: ArrayRecord, state: FederationState,
               strategy, name: str) -> Path:
    """The global model as a medvlm model directory (rounds/round-NNNN, or final) with what resuming needs."""
    from medvlm.finetuning import exportable

    load_arrays(model, arrays)
    moments = strategy_state(strategy)

    def write(tmp: Path) -> None:
        save_model_dir(tmp, exportable(model), processor, cfg, state.history[-1]["validation"] if state.history else None)
        save_file({k: v.contiguous() for k, v in arrays.to_torch_state_dict().items()}, str(tmp / ARRAYS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        if moments:
            np.savez(tmp / SERVER_OPTIMIZER_FILE, **moments)

    return write_atomically(out / name, write)


def _prune_rounds(out: Path, keep_last: int) -> None:
    import shutil

    folders = sorted(p for p in (out / ROUNDS).glob("round-*") if p.is_dir())
    for old in folders[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _start(grid, cfg: RunConfig, out: Path, nodes: list[int], run_config: str):
    """(processor, global arrays, state, tokenizer bytes, resumed folder): from the newest round
    checkpoint, else a fresh model on a federated tokenizer."""
    import accelerate

    from medvlm.processing import MedVLMProcessor
    from medvlm.tokenization import SPM_FILE
    from .weights import to_arrays

    resumed = newest_round(out)
    if resumed is not None:
        processor = MedVLMProcessor.from_pretrained(resumed)
        state = FederationState(**json.loads((resumed / STATE_FILE).read_text()))
        arrays = ArrayRecord(load_file(str(resumed / ARRAYS_FILE)))
        spm = resumed / SPM_FILE
        print(f"[medvlm] resuming the federation after round {state.round} ({resumed})")
        return processor, arrays, state, spm.read_bytes() if spm.is_file() else b"", resumed
    from medvlm.runs import build_processor
    from .site import with_tokenizer

    spm = federated_tokenizer(grid, cfg, out, nodes, run_config)
    processor = build_processor(with_tokenizer(cfg, spm, out / "tokenizer"), [])
    accelerate.utils.set_seed(cfg.train.seed)
    return processor, to_arrays(site_model(cfg, processor, None)), FederationState(), spm, None


def _secure_training(grid, context, cfg: RunConfig, num_sites: int):
    """SecAgg+ for the training steps when `federated.secure_aggregation`, else None."""
    if not cfg.federated.secure_aggregation:
        return None
    if context is None:
        raise UserError("federated.secure_aggregation needs the ServerApp's Flower context (run it through "
                        "`medvlm federate` or `flwr run`)")
    from .secure_aggregation import SecureTraining

    return SecureTraining(grid, context, cfg, num_sites, REPLY_TIMEOUT_S)


def run_federation(grid, cfg: RunConfig, context=None) -> Path:
    """Every round of the federation (resuming after the newest round checkpoint); returns final/.
    `context`: the ServerApp's Flower Context (secure aggregation runs Flower's legacy workflow on it)."""
    f, out = cfg.federated, Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    nodes = wait_for_sites(grid, f.min_sites)
    run_config = json.dumps(cfg.to_dict())
    processor, arrays, state, spm, resumed = _start(grid, cfg, out, nodes, run_config)
    model = site_model(cfg, processor, arrays)  # holds the global weights when a round is saved
    strategy = build_strategy(cfg, len(nodes))
    restore_strategy_state(strategy, resumed / SERVER_OPTIMIZER_FILE if resumed else None, state.accountant)
    base = {"run-config": run_config, "tokenizer": spm}
    secure = _secure_training(grid, context, cfg, len(nodes))
    for server_round in range(state.round + 1, f.rounds + 1):
        arrays, row = run_round(grid, strategy, cfg, server_round, arrays, base, secure)
        row.update(privacy_row(strategy, cfg))
        state.round, state.accountant = server_round, accountant_state(strategy)
        state.history.append(row)
        state.sites = sorted(set(state.sites) | set(row["validation"]))
        _print_row(row, f.rounds)
        save_round(out, model, processor, cfg, arrays, state, strategy, f"{ROUNDS}/round-{server_round:04d}")
        _prune_rounds(out, f.keep_last)
        atomic_write_text(out / SUMMARY_FILE, json.dumps(asdict(state), indent=1))
    if secure is not None:
        secure.close()
    final = save_round(out, model, processor, cfg, arrays, state, strategy, "final")
    print(f"[medvlm] saved {final} (the global model after round {state.round})")
    return final

