"""`medvlm serve`: a local web app (Gradio) and a small JSON API over one trained model.

    uploads.py   uploaded bytes -> pixels, with the size limits and 4xx reasons
    reader.py    the model work: report (streamed), labels, attention per word, Grad-CAM, VQA, retrieval
    examples.py  the studies the page offers to try (built-in synthetic ones, a folder of the user's)
    api.py       the HTTP routes (/healthz, /v1/report, /v1/vqa) and the bounded queue in front of the model
    web.py       the Gradio page
    server.py    what the command runs: one temporary folder, analytics off, bound to 127.0.0.1

Gradio and its web stack are the optional extra `medvlm[serve]`; nothing here imports them at
`import medvlm` time.
"""
