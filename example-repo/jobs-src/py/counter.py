"""A stateful PyFlink stream: generated clicks (datagen, built in), a running count per user in keyed
state (uid "py-click-count"), printed. Unbounded; its state survives stop-with-savepoint and a start
from that savepoint. Arguments: [--rate N] [--format v1|v2] [--name JOB_NAME]."""

import argparse

from pyflink.common import Types
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

from lib.clicks import CountPerUser, check_rate


def main():
    parser = argparse.ArgumentParser(prog="counter.py")
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--format", choices=["v1", "v2"], default="v1")
    parser.add_argument("--name", help="job name (default: the pipeline.name option)")
    args = parser.parse_args()

    env = StreamExecutionEnvironment.get_execution_environment()
    tables = StreamTableEnvironment.create(env)
    tables.execute_sql(
        "CREATE TABLE clicks (user_id BIGINT) WITH ("
        f"'connector' = 'datagen', 'rows-per-second' = '{check_rate(args.rate)}', "
        "'fields.user_id.min' = '1', 'fields.user_id.max' = '5')"
    )
    clicks = tables.to_data_stream(tables.from_path("clicks"))
    # Stable uids on every operator we own: state is matched by them on restore.
    counts = (
        clicks.key_by(lambda row: row[0], key_type=Types.LONG())
        .process(CountPerUser(args.format), output_type=Types.STRING())
        .name("count-per-user")
        .uid("py-click-count")
    )
    counts.print().name("print").uid("py-print")
    if args.name:
        env.execute(args.name)
    else:
        env.execute()


if __name__ == "__main__":
    main()
