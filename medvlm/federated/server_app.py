"""The Flower ServerApp of a deployment: `flwr run` hands it the app's run config, whose
`config` is the medvlm YAML preset (a path on the SuperLink's machine) and `overrides` its
`section.key=value` overrides; it then runs the same server loop as the simulation
(medvlm.federated.server). README "Federated training" shows the processes to start."""

import shlex

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from medvlm.config import load_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from .server import run_federation

    config = str(context.run_config.get("config", "")) or None
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    run_federation(grid, load_config(config, overrides), context)
