package dev.flinkgitops.runner;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.TableEnvironment;

/**
 * Runs one Flink SQL pipeline handed over in the run request, so nothing has to be placed on the
 * JobManager host: {@code SET}, DDL and views in order, then exactly one job-producing statement
 * (an {@code INSERT} or an {@code EXECUTE STATEMENT SET}).
 *
 * <p>Arguments: {@code [--batch] [--parse-only] --statement SQL [--statement SQL ...]}. The agent splits
 * the spec's files into statements (it reports errors with file and line), so each statement arrives
 * whole and nothing here parses SQL text by hand.
 *
 * <p>{@code --parse-only} runs the setup statements (they only touch the in-memory catalog) and
 * explains the job statement instead of executing it: the planner validates names, types and
 * connectors without submitting a job.
 */
public final class SqlRunner {
    private SqlRunner() {}

    public static void main(String[] args) {
        boolean batch = false;
        boolean parseOnly = false;
        List<String> statements = new ArrayList<>();
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--batch":
                    batch = true;
                    break;
                case "--parse-only":
                    parseOnly = true;
                    break;
                case "--statement":
                    if (i + 1 >= args.length) {
                        throw new IllegalArgumentException("--statement needs a value");
                    }
                    statements.add(args[++i]);
                    break;
                default:
                    throw new IllegalArgumentException("unknown argument: " + args[i]);
            }
        }
        long jobStatements = statements.stream().filter(SqlRunner::producesJob).count();
        if (jobStatements != 1) {
            throw new IllegalArgumentException(
                    "expected exactly one INSERT or EXECUTE STATEMENT SET, got " + jobStatements);
        }
        EnvironmentSettings settings =
                batch ? EnvironmentSettings.inBatchMode() : EnvironmentSettings.inStreamingMode();
        TableEnvironment tables = TableEnvironment.create(settings);
        for (int n = 0; n < statements.size(); n++) {
            String statement = statements.get(n);
            try {
                String[] setting = setting(statement);
                if (setting != null) {
                    // TableEnvironment leaves SET to the SQL client; the session's config is ours.
                    tables.getConfig().set(setting[0], setting[1]);
                } else if (parseOnly && producesJob(statement)) {
                    tables.explainSql(statement);
                } else {
                    // In a run request the job statement's submission is detached: this returns
                    // once the JobManager has the job.
                    tables.executeSql(statement);
                }
            } catch (RuntimeException e) {
                throw new IllegalArgumentException(
                        "statement " + (n + 1) + " of " + statements.size() + ": " + e.getMessage(), e);
            }
        }
    }

    private static final Pattern SET =
            Pattern.compile("(?is)SET\\s+'((?:[^']|'')*)'\\s*=\\s*'((?:[^']|'')*)'\\s*");

    /** {@code SET 'key' = 'value'} as key and value (quotes doubled inside), else null. */
    static String[] setting(String statement) {
        Matcher matcher = SET.matcher(statement.strip());
        if (!matcher.matches()) {
            if (statement.strip().toUpperCase(Locale.ROOT).startsWith("SET")) {
                throw new IllegalArgumentException("write SET as SET 'key' = 'value': " + statement);
            }
            return null;
        }
        return new String[] {
            matcher.group(1).replace("''", "'"), matcher.group(2).replace("''", "'")
        };
    }

    /** INSERT (also INSERT OVERWRITE) or a statement set; comments were removed by the agent. */
    static boolean producesJob(String statement) {
        String head = statement.strip().toUpperCase(Locale.ROOT).replaceAll("\\s+", " ");
        return head.startsWith("INSERT ") || head.startsWith("EXECUTE STATEMENT SET");
    }
}
