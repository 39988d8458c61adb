"""One site as the client sees it: the server's run config with the site's own data settings,
its records (loaded once per process), its working folder, and the tokenizer the server sent.

Where a site's data is comes from its Flower node config, never from the server:
- in a simulation Flower numbers the nodes (`partition-id`), which picks one of the synthetic
  hospitals (`data.options.hospital`, medvlm.data.hospitals);
- in a deployment each SuperNode is started with `--node-config "overrides='data.dataset=csv
  data.root=/srv/cxr' site-name='st-marys'"`: medvlm `section.key=value` overrides of the data
  section, applied on this machine only. `hospital=<index>` picks a synthetic hospital there too
  (the deployment test uses it), and `site-dir=<path>` sets the working folder.
"""

import copy
import json
import shlex
from pathlib import Path

from medvlm.config import RunConfig, as_overrides, load_config
from medvlm.errors import UserError

_RECORDS: dict[tuple[str, str], list[dict]] = {}  # (site config as JSON, split) -> records
SITE_SECTIONS = ("data",)  # what a site may set for itself: where and how its data is read


def config_from_json(text: str, overrides: list[str] = ()) -> RunConfig:
    """The RunConfig the server sent (its `to_dict()` as JSON), with `overrides` on top."""
    return load_config(None, as_overrides(json.loads(text)) + list(overrides))


def site_overrides(node_config: dict, cfg: RunConfig) -> list[str]:
    """The site's own data settings from its node config (see the module docstring)."""
    overrides = shlex.split(str(node_config.get("overrides", "")))
    for item in overrides:
        if item.split(".", 1)[0] not in SITE_SECTIONS:
            raise UserError(f"node config 'overrides': {item!r} sets a {item.split('.', 1)[0]!r} key; a site may only "
                            f"set its own {', '.join(SITE_SECTIONS)} settings (the rest is the server's config)")
    index = node_config.get("hospital", node_config.get("partition-id"))
    if index is not None and cfg.data.dataset == "synthetic" and not overrides:
        if not cfg.data.options.get("hospitals"):
            raise UserError("federated training on the synthetic data needs data.options.hospitals (the number of "
                            "simulated hospitals), so that each site holds different studies")
        overrides.append(f"data.options.hospital={int(index)}")
    if not overrides:
        raise UserError(f"this site's node config {dict(node_config)} does not say where its data is: start the "
                        "SuperNode with --node-config \"overrides='data.root=<folder> ...'\" (or hospital=<index> "
                        "for a synthetic hospital)")
    return overrides


def site_name(node_config: dict, cfg: RunConfig) -> str:
    """`site-name` from the node config, else the synthetic hospital's name, else the node's data root."""
    if node_config.get("site-name"):
        return str(node_config["site-name"])
    if cfg.data.dataset == "synthetic" and cfg.data.options.get("hospital") is not None:
        from medvlm.data.hospitals import hospital_names

        return hospital_names(int(cfg.data.options["hospitals"]))[int(cfg.data.options["hospital"])]
    return Path(cfg.data.root or "site").name


def site_dir(node_config: dict, cfg: RunConfig, name: str) -> Path:
    """Where this site keeps its round checkpoints and the tokenizer it was sent."""
    if node_config.get("site-dir"):
        return Path(str(node_config["site-dir"]))
    return Path(cfg.train.output_dir) / "sites" / name


def site_records(cfg: RunConfig, split: str) -> list[dict]:
    """The site's records of `split`, read once per process (a simulation's worker serves every site)."""
    from medvlm.runs import records_for

    key = (json.dumps(cfg.data.__dict__, sort_keys=True, default=str), split)
    if key not in _RECORDS:
        _RECORDS[key] = records_for(cfg, split)
    return _RECORDS[key]


def with_tokenizer(cfg: RunConfig, spm_model: bytes, folder: Path) -> RunConfig:
    """`cfg` reading the sentencepiece tokenizer the server sent (saved under `folder`); empty
    bytes: the config's own tokenizer (a pretrained LM's, present at every site)."""
    if not spm_model:
        return cfg
    from medvlm.tokenization import SPM_FILE, fast_tokenizer_from_sentencepiece

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / SPM_FILE).is_file() or (folder / SPM_FILE).read_bytes() != spm_model:
        (folder / SPM_FILE).write_bytes(spm_model)
        fast_tokenizer_from_sentencepiece(folder / SPM_FILE, cfg.data.max_length).save_pretrained(str(folder))
    cfg = copy.deepcopy(cfg)
    cfg.data.tokenizer = str(folder)
    return cfg


def quiet_progress_bars() -> None:
    """No per-file progress bars from the Hugging Face libraries in this process (a federation
    saves and loads a model every round; the server prints one line per round instead)."""
    import huggingface_hub.utils
    import transformers

    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
