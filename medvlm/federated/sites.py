"""What a simulation's sites hold, said before it starts: each synthetic hospital's share of
the training studies, its normal share and its commonest findings (medvlm.data.hospitals)."""

from medvlm.config import RunConfig


def describe_sites(cfg: RunConfig) -> None:
    """Print one line per simulated site; real data (a deployment) is described by its sites."""
    options = cfg.data.options
    if cfg.data.dataset != "synthetic" or not options.get("hospitals"):
        return
    from medvlm.data.hospitals import site_summary
    from medvlm.runs import records_for

    pooled = records_for(_pooled(cfg), "train")
    for site, row in site_summary(pooled).items():
        kinds = {k: v for k, v in row.items() if k not in ("studies", "normal")}
        common = ", ".join(f"{kind} {share:.0%}" for kind, share in sorted(kinds.items(), key=lambda kv: -kv[1])[:3])
        print(f"[medvlm] site {site}: {row['studies']} training studies, {row['normal']:.0%} normal; {common}")


def _pooled(cfg: RunConfig) -> RunConfig:
    import copy

    pooled = copy.deepcopy(cfg)
    pooled.data.options = {**cfg.data.options, "hospital": None}
    return pooled
