"""What `medvlm serve` runs: the API and the page on one local port, nothing sent anywhere.

Every file the server writes (Gradio's uploads, multipart spooling, the example PNGs) goes into
one temporary folder that is removed when the server stops; Gradio's analytics and version check
are off and its page loads no outside fonts or scripts, so it works on an air-gapped machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from ..errors import UserError
from .uploads import Limits


def _quiet_offline_environment(folder: Path) -> None:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "uploads")
    os.environ.setdefault("MPLCONFIGDIR", str(folder / "matplotlib"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    tempfile.tempdir = str(folder)  # starlette spools large multipart parts through tempfile


def serve(checkpoint: str, host: str = "127.0.0.1", port: int = 7860, examples: str | None = None,
          gallery: str | None = "auto", weights: str = "fp32", limits: Limits = Limits()) -> None:
    folder = Path(tempfile.mkdtemp(prefix="medvlm-serve-"))
    try:
        _quiet_offline_environment(folder)
        try:
            import gradio as gr
            import uvicorn
        except ImportError as error:
            raise UserError(f"`medvlm serve` needs the serve extra ({error.name} is missing): "
                            "pip install -e \".[serve]\"") from None
        from .api import create_api
        from .examples import builtin_examples, folder_examples
        from .reader import StudyReader
        from .web import create_page

        reader = StudyReader(checkpoint, gallery=gallery, weights=weights)
        offered = builtin_examples(folder / "examples") + (folder_examples(examples) if examples else [])
        allowed = [str(folder / "examples")] + ([str(Path(examples).resolve())] if examples else [])
        app = gr.mount_gradio_app(create_api(reader, limits), create_page(reader, offered, limits), path="/",
                                  allowed_paths=allowed, ssr_mode=False, mcp_server=False,
                                  max_file_size=limits.max_upload_bytes, server_name=host, server_port=port)
        print(f"[medvlm] serving {reader.name} at http://{host}:{port} (API: /healthz, /v1/report, /v1/vqa"
              f"{'' if reader.gallery else '; no report gallery'}); Ctrl-C stops", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                               timeout_graceful_shutdown=5))
        # SIGTERM (a service manager, a test) stops the server as Ctrl-C does, so the folder goes too
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(server, "should_exit", True))
        server.run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
