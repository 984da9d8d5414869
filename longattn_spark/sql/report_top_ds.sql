-- Report: the usable window with the highest DS (the profile's window without a selection).
--   :scored  output of report_scores.sql
SELECT window_id FROM IDENTIFIER(:scored)
WHERE excluded_reason IS NULL
ORDER BY ds DESC, window_id LIMIT 1
