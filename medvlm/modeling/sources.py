"""Where a `pretrained_path` points: a local file or folder, or a hub id.

A hub id is looked up in the local Hugging Face cache first, then downloaded where the hub is
reachable. Where it is not (an air-gapped hospital machine, CI), the error says what to
download and where to point the setting, instead of a connection traceback.
"""

import functools
import re
from pathlib import Path

from ..errors import UserError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2", "microsoft/rad-dino"


def resolve_local(value: str | Path, key: str, wanted: str | None = None) -> Path:
    """A local path for the setting `key`: `value` itself when it exists, else the snapshot
    folder of the hub repository it names. `wanted` is a file the snapshot must hold."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    text = str(value)
    if not HUB_ID.match(text) or text.startswith(("/", ".", "~")):
        raise UserError(f"{key}={text!r}: no such file or folder")
    return _hub_snapshot(text, key, wanted)


@functools.cache  # one lookup per process: the config, the processor and the model all ask
def _hub_snapshot(repo_id: str, key: str, wanted: str | None) -> Path:
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache: try the hub below
        pass
    reason = "the hub is switched off here (HF_HUB_OFFLINE)"
    if not constants.HF_HUB_OFFLINE:
        try:
            folder = Path(snapshot_download(repo_id, etag_timeout=10))
            if wanted is None or (folder / wanted).exists():
                return folder
            reason = f"the download has no {wanted}"
        except Exception as error:  # noqa: BLE001 - unreachable hub, unknown repo, gated model
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    raise UserError(
        f"{key}={repo_id!r} is neither a local file or folder nor a hub model this machine can fetch "
        f"({reason}). On a machine that reaches the hub run `hf download {repo_id} --local-dir "
        f"models/{repo_id.split('/')[-1]}`, copy that folder here, and set {key}: models/{repo_id.split('/')[-1]}"
    )
