"""The attention-distance profile of one window with the ``--model`` checkpoint: how far back
layer 0 attends (``longattn_spark.scorers.longattn.profile``), checked against the stored DS."""

from __future__ import annotations

from longattn_spark.config import ReportConfig
from longattn_spark.errors import ConfigError, InputError
from longattn_spark.report.data import ProfileResult, ReportInputs, is_smoke_test_model
from longattn_spark.sqlfiles import load_sql


def window_profile(spark, inputs: ReportInputs, cfg: ReportConfig, window_id: str
                   ) -> ProfileResult:
    """Layer-0 attention-distance profile of one window with the ``--model`` checkpoint,
    at the scorer's L and with k among the bucket edges (so mass at distance >= k is the DS)."""
    import torch

    from longattn_spark.devices import resolve_device
    from longattn_spark.scorers.longattn import Layer0Scorer, build_model_input
    from longattn_spark.scorers.longattn.profile import attention_distance_profile, mass_from

    window = spark.sql(load_sql("report_window"), args={
        "windows": inputs.windows_view, "window_id": window_id}).first()
    if window is None:
        raise ConfigError(f"--profile-window-id {window_id!r}: no such window in --windows "
                          f"{inputs.windows}")
    score = spark.sql(load_sql("report_score_row"), args={
        "scores": inputs.scores_view, "scorer_id": inputs.scorer_id,
        "window_id": window_id}).first()
    seq_len = int((score and score["seq_len"]) or inputs.seq_len
                  or (window["n_tokens"] or 0) + 1)
    min_distance = int((score and score["min_distance"]) or inputs.min_distance
                       or seq_len // 4)
    rope_theta = inputs.scorer_info.get("rope_theta_override")
    try:
        scorer = Layer0Scorer.from_pretrained(cfg.model, device=resolve_device(cfg.device),
                                              dtype="float32", rope_theta=rope_theta,
                                              kernel="torch",
                                              layer=int(inputs.scorer_info.get("layer") or 0))
        bos_id = scorer.bos_id
    except InputError as exc:
        raise InputError(f"--model {cfg.model}: {exc}") from None
    try:
        ids = build_model_input(list(window["input_ids"] or []), bos_id, seq_len)
    except InputError as exc:
        raise InputError(f"--profile-window-id {window_id}: {exc}") from None
    if int(ids.max()) >= scorer.vocab_size:
        raise InputError(f"--model {cfg.model}: window {window_id} has token ids outside its "
                         f"vocabulary of {scorer.vocab_size}")
    with torch.inference_mode():
        q, k = scorer.rotated_query_key(ids.to(scorer.device))
        profile = attention_distance_profile(q, k, cfg.profile_buckets,
                                             spacing=cfg.profile_spacing,
                                             extra_edges=(min_distance,))
    notes = []
    fingerprint = inputs.scorer_info.get("model_fingerprint")
    if fingerprint and fingerprint != scorer.checkpoint.fingerprint():
        notes.append(f"--model {cfg.model} is not the model that produced these scores "
                     f"({inputs.scorer_info.get('model')}): the profile and the stored DS "
                     "differ.")
    if is_smoke_test_model(cfg.model):
        notes.append(f"--model {cfg.model} is a SMOKE-TEST model with random weights: this "
                     "profile means nothing.")
    return ProfileResult(
        window_id=window_id, category=window["category"], model=cfg.model, seq_len=seq_len,
        min_distance=min_distance, edges=tuple(int(e) for e in profile.edges),
        mass=tuple(float(m) for m in profile.mass),
        mass_beyond_k=mass_from(profile, min_distance),
        stored_ds=float(score["ds"]) if score and score["ds"] is not None else None,
        spacing=cfg.profile_spacing, notes=tuple(notes))
