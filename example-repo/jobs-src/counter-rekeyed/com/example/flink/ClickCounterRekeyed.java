package com.example.flink;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.connector.source.util.ratelimit.RateLimiterStrategy;
import org.apache.flink.connector.datagen.source.DataGeneratorSource;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * Counts clicks per key, with the counting operator under a new uid ("click-count-v3"): Flink cannot
 * match the counts of the "click-count" operator in a savepoint of version 1 or 2 to it, so restoring
 * such a savepoint fails unless non-restored state is allowed (and then every count restarts at zero).
 * Otherwise version 2.
 *
 * Arguments: --name NAME (job name), --rate N (records per second), --keys N.
 */
public class ClickCounterRekeyed {
    public static void main(String[] args) throws Exception {
        String name = option(args, "--name", "click-counter");
        long rate = Long.parseLong(option(args, "--rate", "10"));
        long keys = Long.parseLong(option(args, "--keys", "4"));

        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        DataGeneratorSource<Long> clicks =
                new DataGeneratorSource<>(index -> index, Long.MAX_VALUE, RateLimiterStrategy.perSecond(rate), Types.LONG);
        env.fromSource(clicks, WatermarkStrategy.noWatermarks(), "clicks")
                .uid("clicks-source")
                .keyBy(click -> click % keys, Types.LONG)
                .process(new CountPerKey())
                .uid("click-count-v3")
                .name("count per key")
                .map(line -> "rekeyed " + line)
                .uid("format-v2")
                .print()
                .uid("print-sink");
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

    static String option(String[] args, String key, String fallback) {
        for (int i = 0; i + 1 < args.length; i++) {
            if (args[i].equals(key)) {
                return args[i + 1];
            }
        }
        return fallback;
    }
}
