"""`medvlm federate`: the federation simulated on this machine with Flower's simulation engine,
one virtual SuperNode per site (`federated.sites`), the same ClientApp and server loop a
deployment runs (medvlm.federated.client_app, medvlm.federated.server)."""

import logging
import os

from flwr.serverapp import Grid, ServerApp

from medvlm.config import RunConfig


def simulation_backend(cpus: int | None = None) -> dict:
    """Ray for the virtual sites: one site trains at a time with every core (two sites at once on
    a small machine would each run several times slower)."""
    cpus = cpus or os.cpu_count() or 1
    return {"client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": True}}


def simulate(cfg: RunConfig) -> None:
    """Run every round of the federation of `cfg` (resuming after its newest round checkpoint)."""
    from flwr.simulation import run_simulation

    from .client_app import app as client_app
    from .server import run_federation
    from .site import quiet_progress_bars

    server_app = ServerApp()
    failures: list[BaseException] = []

    @server_app.main()
    def main(grid: Grid, context) -> None:
        try:
            run_federation(grid, cfg, context)
        except BaseException as error:  # the simulation engine logs and swallows it: hand it back
            failures.append(error)
            raise

    logging.getLogger("flwr").propagate = False  # Flower prints its own lines; medvlm's handler would repeat them
    quiet_progress_bars()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.federated.sites,
                   backend_config=simulation_backend())
    if failures:
        raise failures[0]
