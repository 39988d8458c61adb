"""The server's strategy from `federated.*`: Flower's FedAvg, FedProx or FedAdam, wrapped for
differential privacy (client-side fixed clipping, with Flower's RDP accountant for epsilon)
when `federated.dp_noise_multiplier` > 0; and the strategy state a restarted server needs
(FedAdam's moment estimates, the accountant's releases)."""

from pathlib import Path

import numpy as np
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAdam, FedAvg, FedProx

from medvlm.config import RunConfig
from medvlm.errors import UserError

NOT_ACCOUNTED = ("not computed: Flower's privacy accountant composes only FedAvg's aggregation "
                 "(federated.strategy fedavg or fedprox)")


def sampled_sites(cfg: RunConfig, num_sites: int) -> int:
    """How many sites train each round: as Flower's FedAvg samples them."""
    f = cfg.federated
    return min(num_sites, max(int(num_sites * f.fraction_train), min(f.min_sites, num_sites)))


def _base_strategy(cfg: RunConfig, num_sites: int):
    f = cfg.federated
    common = dict(fraction_train=f.fraction_train, fraction_evaluate=1.0,
                  min_train_nodes=min(f.min_sites, num_sites), min_evaluate_nodes=min(f.min_sites, num_sites),
                  min_available_nodes=min(f.min_sites, num_sites),
                  # client-level DP needs equal weights (a site's size would leak through them)
                  weighted_by_key="uniform-weight" if f.dp_noise_multiplier > 0 else "num-examples")
    if f.strategy == "fedprox":
        return FedProx(proximal_mu=f.proximal_mu, **common)
    if f.strategy == "fedadam":
        return FedAdam(eta=f.server_learning_rate, eta_l=cfg.train.learning_rate, tau=f.server_adaptivity, **common)
    return FedAvg(**common)


def build_strategy(cfg: RunConfig, num_sites: int):
    f = cfg.federated
    strategy = _base_strategy(cfg, num_sites)
    if f.dp_noise_multiplier <= 0:
        return strategy
    if f.secure_aggregation:
        raise UserError("federated.secure_aggregation with federated.dp_noise_multiplier: Flower's SecAgg+ workflow "
                        "and its DP wrappers do not compose in one round; choose one")
    accountant = None
    if type(strategy).aggregate_train is FedAvg.aggregate_train:
        from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
        from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

        accountant = RdpAccountant(PrivacyConfig(target_delta=f.dp_delta, population_size=num_sites,
                                                 neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                                 sampling_method=SamplingMethod.NO_AMPLIFICATION))
    return DifferentialPrivacyClientSideFixedClipping(strategy, f.dp_noise_multiplier, f.dp_clipping_norm,
                                                      sampled_sites(cfg, num_sites), accountant=accountant)


def _inner(strategy):
    return getattr(strategy, "strategy", strategy)


def strategy_state(strategy) -> dict[str, np.ndarray]:
    """FedAdam's first and second moments ({"m/<name>": ..., "v/<name>": ...}); {} for the others."""
    inner = _inner(strategy)
    moments = {}
    for kind in ("m_t", "v_t"):
        for name, value in (getattr(inner, kind, None) or {}).items():
            moments[f"{kind}/{name}"] = np.asarray(value)
    return moments


def restore_strategy_state(strategy, moments_file: Path | None, accountant: dict | None) -> None:
    """Put back what `strategy_state` and `accountant_state` saved."""
    inner = _inner(strategy)
    if moments_file is not None and moments_file.is_file() and hasattr(inner, "m_t"):
        with np.load(moments_file) as saved:
            for kind in ("m_t", "v_t"):
                setattr(inner, kind, {k.split("/", 1)[1]: saved[k] for k in saved.files if k.startswith(f"{kind}/")})
    if accountant and getattr(strategy, "accountant", None) is not None:
        strategy.accountant.load_state_dict(accountant)


def accountant_state(strategy) -> dict | None:
    accountant = getattr(strategy, "accountant", None)
    return accountant.state_dict() if accountant is not None else None


def privacy_row(strategy, cfg: RunConfig) -> dict:
    """What a round's history row says about privacy: epsilon at dp_delta so far, or why not."""
    f = cfg.federated
    if f.dp_noise_multiplier <= 0:
        return {"differential_privacy": "off"}
    spent = strategy.privacy_spent() if hasattr(strategy, "privacy_spent") else None
    if spent is None:
        return {"differential_privacy": {"noise_multiplier": f.dp_noise_multiplier, "clipping_norm": f.dp_clipping_norm,
                                         "epsilon": NOT_ACCOUNTED}}
    return {"differential_privacy": {"noise_multiplier": f.dp_noise_multiplier, "clipping_norm": f.dp_clipping_norm,
                                     "epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases,
                                     "method": spent.accounting_method}}
