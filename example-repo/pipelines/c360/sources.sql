-- C360 shared DDL: the sources and the enriched-sales table on disk. Every C360 spec lists this
-- file first; stream specs then list enriched_sales_view.sql; each job file holds exactly one INSERT.
--
-- In a production C360 setup these would be Kafka topics and catalog tables. Here they are built-in
-- connectors only (datagen, filesystem), so the pipelines run on a plain session cluster. Each job
-- generates its own data: the streams of two jobs are not the same rows.

-- Customer dimension: a bounded sequence of 20 customers, emitted once at start. The attributes are
-- computed from the id so that every run (and the nightly report) sees the same segments.
-- Primary key plus a time attribute make it a versioned table, so sales can join it "as of" their
-- time (temporal join). All rows are valid from 2020; the source finishes after 20 rows, and its
-- watermark then jumps to the end of time, so it never holds the join back.
CREATE TABLE customers (
  customer_id BIGINT,
  customer_name AS CONCAT('customer-', CAST(customer_id AS STRING)),
  segment AS CASE MOD(customer_id, 3) WHEN 0 THEN 'gold' WHEN 1 THEN 'silver' ELSE 'bronze' END,
  country AS CASE MOD(customer_id, 4) WHEN 0 THEN 'DE' WHEN 1 THEN 'FR' WHEN 2 THEN 'NL' ELSE 'PL' END,
  valid_from AS TIMESTAMP '2020-01-01 00:00:00',
  WATERMARK FOR valid_from AS valid_from,
  PRIMARY KEY (customer_id) NOT ENFORCED
) WITH (
  'connector' = 'datagen',
  'fields.customer_id.kind' = 'sequence',
  'fields.customer_id.start' = '1',
  'fields.customer_id.end' = '20'
);

-- Product dimension: 10 products, versioned and bounded like customers; the price is fixed per product.
CREATE TABLE products (
  product_id BIGINT,
  product_name AS CONCAT('product-', CAST(product_id AS STRING)),
  category AS CASE MOD(product_id, 2) WHEN 0 THEN 'books' ELSE 'games' END,
  unit_price AS CAST(5 + product_id * 2.5 AS DECIMAL(10, 2)),
  valid_from AS TIMESTAMP '2020-01-01 00:00:00',
  WATERMARK FOR valid_from AS valid_from,
  PRIMARY KEY (product_id) NOT ENFORCED
) WITH (
  'connector' = 'datagen',
  'fields.product_id.kind' = 'sequence',
  'fields.product_id.start' = '1',
  'fields.product_id.end' = '10'
);

-- Sales: unbounded, 2 rows per second, keys drawn from the dimensions' ranges so every sale
-- finds its customer and product. Low rate on purpose: the demo cluster has 2 cores.
-- The sale time is the time of generation; the watermark allows 1 s of lateness.
CREATE TABLE sales (
  sale_id STRING,
  customer_id BIGINT,
  product_id BIGINT,
  quantity INT,
  sale_time AS LOCALTIMESTAMP,
  WATERMARK FOR sale_time AS sale_time - INTERVAL '1' SECOND
) WITH (
  'connector' = 'datagen',
  'rows-per-second' = '2',
  'fields.sale_id.length' = '12',
  'fields.customer_id.min' = '1',
  'fields.customer_id.max' = '20',
  'fields.product_id.min' = '1',
  'fields.product_id.max' = '10',
  'fields.quantity.min' = '1',
  'fields.quantity.max' = '5'
);

-- The enriched sales as JSON files: written by sales_enriched.sql (stream), read by
-- nightly_report.sql (batch). A plain local path for the demo cluster; use shared storage
-- (s3://…) when TaskManagers run on several hosts.
CREATE TABLE sales_enriched (
  sale_id STRING,
  sale_time TIMESTAMP(3),
  customer_id BIGINT,
  customer_name STRING,
  segment STRING,
  country STRING,
  product_id BIGINT,
  category STRING,
  quantity INT,
  amount DECIMAL(12, 2)
) WITH (
  'connector' = 'filesystem',
  'path' = 'file:///tmp/flink-gitops-c360/sales_enriched',
  'format' = 'json',
  -- Row formats finish a part file when it rolls and make it visible at the next checkpoint:
  -- roll every minute so the report sees recent sales without waiting for 128 MB.
  'sink.rolling-policy.rollover-interval' = '1 min',
  'sink.rolling-policy.check-interval' = '10 s'
);
