-- The windows the two scorers rank furthest apart within their category (rank as a fraction
-- of the category, so categories of different sizes compare).
SELECT window_id, category, value_a, value_b,
       (rank_a - 1) / greatest(n - 1, 1) AS pct_a, (rank_b - 1) / greatest(n - 1, 1) AS pct_b,
       abs(rank_a - rank_b) / greatest(n - 1, 1) AS gap
FROM IDENTIFIER(:ranked)
ORDER BY gap DESC, window_id
LIMIT :n
