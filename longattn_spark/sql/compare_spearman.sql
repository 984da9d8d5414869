-- Spearman's rank correlation per category: Pearson's correlation of the average ranks.
SELECT category, count(1) AS windows, corr(rank_a, rank_b) AS spearman
FROM IDENTIFIER(:ranked)
GROUP BY category
ORDER BY category
