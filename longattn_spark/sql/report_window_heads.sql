-- Report: the first :tokens token ids and the provenance of a few windows.
--   :windows  windows table   :window_ids  the windows   :tokens
SELECT window_id, doc_id, window_index, token_start, tokenizer,
       slice(input_ids, 1, :tokens) AS head_ids
FROM IDENTIFIER(:windows)
WHERE array_contains(:window_ids, window_id)
