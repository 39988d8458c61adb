"""Image <-> report retrieval: Recall@K both ways, with identical reports counted as hits.

Chest X-ray reports repeat word for word (most normal studies share a handful of reports), so
"the" report of an image is not unique: a retrieved report whose text equals the reference
(after case and whitespace folding) is a hit, and so is, for report -> image, any image whose
own report equals the query. Without that rule a model is punished for ranking an identical
copy first.

Both directions work on *distinct* report texts: image -> report searches the distinct reports
(a gallery with duplicates would fill the top K with copies of one report), and report -> image
asks one query per distinct report, whose relevant images are all images with that report. (With
one query per record instead, a normal report shared by a third of the studies would be asked
a hundred times over and its chance level would dominate the mean.)
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def canonical_text(text: str) -> str:
    return " ".join(str(text).lower().split())


def recall_at_k(similarity, relevant, ks=KS) -> dict[int, float]:
    """similarity: (Q, C) scores, higher = closer; relevant: (Q, C) bool. For each K the share of
    queries with at least one relevant candidate among their K best (ties broken by index)."""
    similarity = np.asarray(similarity, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if similarity.shape != relevant.shape:
        raise ValueError(f"similarity {similarity.shape} and relevant {relevant.shape} differ in shape")
    order = np.argsort(-similarity, axis=1, kind="stable")  # (Q, C) best first
    hits = np.take_along_axis(relevant, order, axis=1)  # (Q, C) relevance in ranked order
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), np.inf)  # (Q,) 0-based rank
    return {k: float(np.mean(first_hit < k)) for k in ks}


def random_recall_at_k(relevant, ks=KS) -> dict[int, float]:
    """Expected Recall@K of a uniformly random ranking: 1 - C(C-m, K) / C(C, K) per query with m
    relevant of C candidates, averaged over queries (the chance level to beat)."""
    relevant = np.asarray(relevant, dtype=bool)
    n_candidates = relevant.shape[1]
    m = relevant.sum(axis=1).astype(np.float64)  # (Q,)
    out = {}
    for k in ks:
        miss = np.ones_like(m)
        for i in range(min(k, n_candidates)):
            miss *= np.clip((n_candidates - m - i) / (n_candidates - i), 0.0, 1.0)
        out[k] = float(np.mean(1.0 - miss))
    return out


def retrieval_metrics(image_embeds, text_embeds, texts, ks=KS) -> dict:
    """R@K image->report (`i2t_r<K>`) and report->image (`t2i_r<K>`), plus the random-ranking
    expectation of each as `baselines.random.<key>`.

    image_embeds: (N, E) and text_embeds: (N, E) L2-normalised, row i of both from record i;
    texts: the N report texts (equal texts are interchangeable, see the module docstring).
    i2t averages over the N images, t2i over the D distinct reports.
    """
    image_embeds = np.asarray(image_embeds, dtype=np.float64)
    text_embeds = np.asarray(text_embeds, dtype=np.float64)
    keys = [canonical_text(t) for t in texts]
    if not (len(keys) == len(image_embeds) == len(text_embeds)):
        raise ValueError("image_embeds, text_embeds and texts must have one row per record")
    distinct = list(dict.fromkeys(keys))
    index_of = {key: i for i, key in enumerate(distinct)}
    key_ids = np.array([index_of[k] for k in keys])  # (N,) id of each record's text
    first_row = np.unique(key_ids, return_index=True)[1]  # (D,) first record with each text
    gallery = text_embeds[first_row]  # (D, E) one row per distinct text

    i2t_relevant = key_ids[:, None] == np.arange(len(distinct))[None, :]  # (N, D): image i, report d
    out = {}
    for name, similarity, relevant in (("i2t", image_embeds @ gallery.T, i2t_relevant),
                                       ("t2i", gallery @ image_embeds.T, i2t_relevant.T)):
        for k, value in recall_at_k(similarity, relevant, ks).items():
            out[f"{name}_r{k}"] = value
        for k, value in random_recall_at_k(relevant, ks).items():
            out[f"baselines.random.{name}_r{k}"] = value
    out["retrieval_num_images"] = len(keys)
    out["retrieval_distinct_reports"] = len(distinct)
    return out
