-- Batch job (sources.sql, this file; job_type: batch): revenue per day, segment and category over
-- the enriched sales files that sales_enriched.sql keeps appending. Bounded: it reads the files present when it
-- starts and finishes. Each run replaces the report (INSERT OVERWRITE).
SET 'pipeline.name' = 'c360-nightly-report';

CREATE TABLE nightly_report (
  sale_date DATE,
  segment STRING,
  category STRING,
  customers BIGINT,
  sales BIGINT,
  -- A string: the CSV writer prints a DECIMAL such as 1570.00 as 1.57E+3.
  revenue STRING
) WITH (
  'connector' = 'filesystem',
  'path' = 'file:///tmp/flink-gitops-c360/nightly_report',
  'format' = 'csv'
);

INSERT OVERWRITE nightly_report
SELECT CAST(sale_time AS DATE) AS sale_date, segment, category,
       COUNT(DISTINCT customer_id) AS customers, COUNT(*) AS sales,
       CAST(SUM(amount) AS STRING) AS revenue
FROM sales_enriched
GROUP BY CAST(sale_time AS DATE), segment, category;
