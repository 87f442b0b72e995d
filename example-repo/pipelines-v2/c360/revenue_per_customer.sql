-- v2 of revenue_per_customer: a COMPATIBLE change. It adds avg_sale, computed after the aggregate
-- from the two aggregates v1 already keeps, so the aggregate's state (key and accumulators) and the
-- shape of the job graph stay the same and the v1 savepoint restores: the counts go on from where v1
-- stopped. The new column also marks the v2 rows in the output:
--   revenue_per_customer> +U[7, customer-7, silver, 13, 470.00, 36.15]
-- Not compatible (tried on Flink 2.3): adding an aggregate such as MAX(amount) or changing the
-- GROUP BY keys (the state's types change: the job restarts in a loop), or adding or removing a
-- join (operators change: the run request is refused with "Cannot map checkpoint/savepoint state").
SET 'pipeline.name' = 'c360-revenue-per-customer';

CREATE TABLE revenue_per_customer (
  customer_id BIGINT,
  customer_name STRING,
  segment STRING,
  sales BIGINT,
  revenue DECIMAL(38, 2),
  avg_sale DECIMAL(38, 2)
) WITH (
  'connector' = 'print',
  'print-identifier' = 'revenue_per_customer'
);

INSERT INTO revenue_per_customer
SELECT customer_id, customer_name, segment, COUNT(*) AS sales, SUM(amount) AS revenue,
       CAST(SUM(amount) / COUNT(*) AS DECIMAL(38, 2)) AS avg_sale
FROM enriched_sales
GROUP BY customer_id, customer_name, segment;
