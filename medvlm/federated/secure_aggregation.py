"""Secure aggregation with Flower's SecAgg+ (`federated.secure_aggregation`): the server learns
only the weighted sum of the sites' updates, never one site's.

Flower runs SecAgg+ as a legacy workflow (`SecAggPlusWorkflow` over a `LegacyContext` and a
legacy FedAvg; its four stages: keys, shares, masked vectors, unmasking), which its Message-API
strategies cannot drive. A secure round therefore takes the training step through that
workflow, and the rest of the round (evaluation, checkpoints) stays on the Message API.

What is masked is each site's *update* (local minus global weights), weighted by its number of
training studies up to `federated.secagg_max_weight`: SecAgg+ quantises every value into
[-8, 8] after weighting (weight / max_weight), so updates, small where weights are not, keep
their precision; the server adds the unmasked average update to the global weights.
"""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from medvlm.config import RunConfig

from .strategies import sampled_sites


class SecureTraining:
    """The training step of each round through SecAgg+; `close()` stops its node-list thread."""

    def __init__(self, grid, context, cfg: RunConfig, num_sites: int, timeout_s: float):
        f = cfg.federated
        self.grid, self.config = grid, {}
        self.sampled = sampled = sampled_sites(cfg, num_sites)
        strategy = LegacyFedAvg(fraction_fit=f.fraction_train, fraction_evaluate=0.0, min_fit_clients=sampled,
                                min_available_clients=min(f.min_sites, num_sites),
                                on_fit_config_fn=lambda _round: dict(self.config))
        self.context = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
        self.thread, self.stop, ready = start_update_client_manager_thread(grid, self.context.client_manager)
        ready.wait()
        self.workflow = SecAggPlusWorkflow(f.secagg_num_shares, f.secagg_reconstruction_threshold,
                                           max_weight=f.secagg_max_weight, timeout=timeout_s)

    def train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> ArrayRecord:
        """The global weights after one securely aggregated round of training."""
        names = list(arrays.keys())
        current = [arrays[name].numpy() for name in names]
        self.config = dict(config)
        state = self.context.state
        state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
        state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(current), keep_input=True)
        self.workflow(self.grid, self.context)  # writes the unmasked weighted mean of the updates back
        mean_update = parameters_to_ndarrays(compat.arrayrecord_to_parameters(
            state.array_records[MAIN_PARAMS_RECORD], keep_input=True))
        return ArrayRecord({name: Array(np.asarray(w + u.reshape(w.shape), dtype=np.float32))
                            for name, w, u in zip(names, current, mean_update, strict=True)})

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def site_update(global_arrays: list[np.ndarray], local: ArrayRecord) -> list[np.ndarray]:
    """What a site hands SecAgg+ to mask: its weights minus the global ones, in the global order,
    each flattened (SecAgg+ mis-sums 0-d arrays such as the contrastive temperature)."""
    return [(local[name].numpy() - g).reshape(-1) for name, g in zip(local.keys(), global_arrays, strict=True)]
