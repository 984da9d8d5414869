-- Report: one window's stored score.   :scores   :scorer_id   :window_id
SELECT ds, variance, seq_len, min_distance, model FROM IDENTIFIER(:scores)
WHERE scorer_id = :scorer_id AND window_id = :window_id
