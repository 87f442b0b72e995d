package com.example.flink;

import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.connector.datagen.source.DataGeneratorSource;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

/**
 * A bounded daily report: sums generated order values per region and finishes by itself.
 *
 * Arguments: --name NAME, --records N (input size), --sleep-ms N (extra run time, for TTL tests).
 */
public class BatchReport {
    public static void main(String[] args) throws Exception {
        String name = option(args, "--name", "daily-report");
        long records = Long.parseLong(option(args, "--records", "1000"));
        long sleepMs = Long.parseLong(option(args, "--sleep-ms", "0"));

        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.setRuntimeMode(RuntimeExecutionMode.BATCH);
        DataGeneratorSource<Long> orders = new DataGeneratorSource<>(index -> index, records, Types.LONG);
        env.fromSource(orders, WatermarkStrategy.noWatermarks(), "orders")
                .map(new SlowStart(sleepMs))
                .map(order -> Tuple2.of("region-" + (order % 3), order % 100), Types.TUPLE(Types.STRING, Types.LONG))
                .keyBy(row -> row.f0, Types.STRING)
                .sum(1)
                .print();
        env.execute(name);
    }

    /** Holds the job open for a while so schedules, TTLs and restarts can be tested. */
    static class SlowStart extends RichMapFunction<Long, Long> {
        private final long sleepMs;

        SlowStart(long sleepMs) {
            this.sleepMs = sleepMs;
        }

        @Override
        public void open(OpenContext context) throws Exception {
            Thread.sleep(sleepMs);
        }

        @Override
        public Long map(Long value) {
            return value;
        }
    }

    static String option(String[] args, String key, String fallback) {
        for (int i = 0; i + 1 < args.length; i++) {
            if (args[i].equals(key)) {
                return args[i + 1];
            }
        }
        return fallback;
    }
}
