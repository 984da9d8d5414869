-- Report: the :n windows with the highest and the :n with the lowest LDS of a selection.
--   :selection, :selection_id   :n
(SELECT 'top' AS side, window_id, category, lds, ds, variance, selected, n_tokens
 FROM IDENTIFIER(:selection)
 WHERE selection_id = :selection_id AND lds IS NOT NULL AND NOT isnan(lds)
 ORDER BY lds DESC, window_id LIMIT :n)
UNION ALL
(SELECT 'bottom' AS side, window_id, category, lds, ds, variance, selected, n_tokens
 FROM IDENTIFIER(:selection)
 WHERE selection_id = :selection_id AND lds IS NOT NULL AND NOT isnan(lds)
 ORDER BY lds ASC, window_id LIMIT :n)
