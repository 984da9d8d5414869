-- Report: one window's tokens (for its attention-distance profile).   :windows   :window_id
SELECT window_id, category, n_tokens, input_ids FROM IDENTIFIER(:windows)
WHERE window_id = :window_id
