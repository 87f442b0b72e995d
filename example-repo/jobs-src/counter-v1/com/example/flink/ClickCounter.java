package com.example.flink;

import java.nio.file.Files;
import java.nio.file.Paths;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.connector.source.util.ratelimit.RateLimiterStrategy;
import org.apache.flink.connector.datagen.source.DataGeneratorSource;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * Counts clicks per key (version 1). Stateful: the per-key count lives in keyed ValueState, so an
 * upgrade that drops the savepoint restarts every count at zero. The checkpoint interval is
 * deliberately not set here: it comes from the job spec (deployment.checkpoint_interval).
 *
 * Arguments: --name NAME (job name), --rate N (records per second), --keys N, and
 * --slow-while PATH: while that file exists, every record takes 20 ms more (a slow sink, for
 * backpressure tests; removing the file lets the job keep up again).
 */
public class ClickCounter {
    public static void main(String[] args) throws Exception {
        String name = option(args, "--name", "click-counter");
        long rate = Long.parseLong(option(args, "--rate", "10"));
        long keys = Long.parseLong(option(args, "--keys", "4"));
        String slowWhile = option(args, "--slow-while", null);

        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        DataGeneratorSource<Long> clicks =
                new DataGeneratorSource<>(index -> index, Long.MAX_VALUE, RateLimiterStrategy.perSecond(rate), Types.LONG);
        DataStream<String> counts = env.fromSource(clicks, WatermarkStrategy.noWatermarks(), "clicks")
                .uid("clicks-source")
                .keyBy(click -> click % keys, Types.LONG)
                .process(new CountPerKey())
                .uid("click-count")
                .name("count per key");
        if (slowWhile != null) {
            counts = counts.map(new SlowWhileFileExists(slowWhile)).uid("slow-while").name("slow while " + slowWhile);
        }
        counts.print().uid("print-sink");
        env.execute(name);
    }

    /** The state every version shares: uid "click-count", one ValueState<Long> named "count". */
    static class CountPerKey extends KeyedProcessFunction<Long, Long, String> {
        private transient ValueState<Long> count;

        @Override
        public void open(OpenContext context) throws Exception {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Types.LONG));
        }

        @Override
        public void processElement(Long click, Context context, Collector<String> out) throws Exception {
            Long current = count.value();
            long next = (current == null ? 0L : current) + 1;
            count.update(next);
            out.collect("key=" + context.getCurrentKey() + " count=" + next);
        }
    }

    /** Sleeps 20 ms per record while the file exists: a sink that cannot keep up, on demand. */
    static class SlowWhileFileExists implements MapFunction<String, String> {
        private final String path;

        SlowWhileFileExists(String path) {
            this.path = path;
        }

        @Override
        public String map(String value) throws Exception {
            if (Files.exists(Paths.get(path))) {
                Thread.sleep(20);
            }
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
