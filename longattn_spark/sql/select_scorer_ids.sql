-- LongAttn selection: which scorers a scores table holds (one selection uses exactly one).
--   :scores   scores table
SELECT scorer_id, count(*) AS windows
FROM IDENTIFIER(:scores)
GROUP BY scorer_id
ORDER BY scorer_id
