"""Federated training with Flower: one model trained across sites whose reports never leave them.

    site.py            what a site is: the server's config with its own data settings, its records
    local_training.py  a site's round on medvlm's Trainer (FedProx's proximal term), its validation
    client_app.py      the Flower ClientApp: query (word counts), train, evaluate
    privacy.py         the client side of DP (fixed clipping) and secure aggregation (SecAgg+)
    weights.py         what travels: trainable weights and norm statistics, as ArrayRecords
    strategies.py      FedAvg / FedProx / FedAdam, the DP wrapper and accountant, their saved state
    server.py          the server loop: tokenizer round, rounds, checkpoints, resume
    server_app.py      the Flower ServerApp for a deployment (`flwr run`)
    simulation.py      `medvlm federate`: Flower's simulation engine on one machine
    sites.py           what the simulated hospitals hold, printed before a run
    comparison.py      the federated model beside centralised and local-only training

Flower (`flwr`) comes with the optional extra: pip install "medvlm[federated]".
"""
