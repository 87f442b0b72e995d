package dev.flinkgitops.runner;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
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
 * <p>Arguments: {@code [--batch] --statement SQL ... --job SQL}. The agent splits the spec's files
 * into statements and classifies them (it reports errors with file and line), so each statement
 * arrives whole, the one that makes the job marked with {@code --job}, and nothing here parses SQL
 * text by hand. (A {@code --statement} that starts with INSERT or EXECUTE STATEMENT SET also counts
 * as the job statement.)
 *
 * <p>{@code --check} is for {@code flink-gitops validate} on a developer's machine or in CI, not for
 * the cluster: several pipelines, each opened by {@code --pipeline NAME [--batch]}, are checked in one
 * JVM. Setup statements run against a fresh in-memory catalog and the job statement is explained
 * instead of executed, so the planner validates names, types and connectors without submitting
 * anything. One line per pipeline goes to stdout: {@code ok<TAB>NAME} or
 * {@code error<TAB>NAME<TAB>STATEMENT<TAB>MESSAGE}. {@code --check --from FILE} reads the arguments
 * from FILE, separated by NUL bytes, so no command line limit applies.
 */
public final class SqlRunner {
    private SqlRunner() {}

    public static void main(String[] args) {
        if (args.length == 3 && args[0].equals("--check") && args[1].equals("--from")) {
            try {
                String all = new String(Files.readAllBytes(Paths.get(args[2])), StandardCharsets.UTF_8);
                List<String> expanded = new ArrayList<>();
                expanded.add("--check");
                for (String arg : all.split("\0", -1)) {
                    if (!arg.isEmpty()) {
                        expanded.add(arg);
                    }
                }
                check(expanded.toArray(new String[0]));
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            return;
        }
        if (args.length > 0 && args[0].equals("--check")) {
            check(args);
            return;
        }
        boolean batch = false;
        List<String> statements = new ArrayList<>();
        int job = -1;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--batch":
                    batch = true;
                    break;
                case "--statement":
                case "--job":
                    if (i + 1 >= args.length) {
                        throw new IllegalArgumentException(args[i] + " needs a value");
                    }
                    if (args[i].equals("--job")) {
                        job = statements.size();
                    }
                    statements.add(args[++i]);
                    break;
                default:
                    throw new IllegalArgumentException("unknown argument: " + args[i]);
            }
        }
        run(batch, statements, job, false);
    }

    /**
     * Runs (or, with {@code explainOnly}, explains) one pipeline; a failing statement is named by its
     * position so the agent can point at its file and line.
     */
    static void run(boolean batch, List<String> statements, int job, boolean explainOnly) {
        long jobStatements = 0;
        for (int n = 0; n < statements.size(); n++) {
            if (n == job || producesJob(statements.get(n))) {
                jobStatements++;
            }
        }
        if (jobStatements != 1) {
            throw new StatementException(
                    statements.size(),
                    "expected exactly one INSERT or EXECUTE STATEMENT SET, got " + jobStatements,
                    null);
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
                } else if (explainOnly && (n == job || producesJob(statement))) {
                    tables.explainSql(statement);
                } else {
                    // In a run request the job statement's submission is detached: this returns
                    // once the JobManager has the job.
                    tables.executeSql(statement);
                }
            } catch (RuntimeException e) {
                throw new StatementException(n + 1, "statement " + (n + 1) + " of " + statements.size() + ": " + e.getMessage(), e);
            }
        }
    }

    private static void check(String[] args) {
        String name = null;
        boolean batch = false;
        List<String> statements = new ArrayList<>();
        int job = -1;
        for (int i = 1; i <= args.length; i++) {
            if (i == args.length || args[i].equals("--pipeline")) {
                if (name != null) {
                    System.out.println(checkOne(name, batch, statements, job));
                }
                if (i < args.length) {
                    name = args[++i];
                    batch = false;
                    statements = new ArrayList<>();
                    job = -1;
                }
            } else if (args[i].equals("--batch")) {
                batch = true;
            } else if ((args[i].equals("--statement") || args[i].equals("--job")) && i + 1 < args.length) {
                if (args[i].equals("--job")) {
                    job = statements.size();
                }
                statements.add(args[++i]);
            } else {
                throw new IllegalArgumentException("unknown argument: " + args[i]);
            }
        }
    }

    private static String checkOne(String name, boolean batch, List<String> statements, int job) {
        try {
            run(batch, statements, job, true);
            return "ok\t" + name;
        } catch (StatementException e) {
            return "error\t" + name + "\t" + e.statement + "\t" + oneLine(positioned(e));
        } catch (RuntimeException e) {
            return "error\t" + name + "\t0\t" + oneLine(String.valueOf(e.getMessage()));
        }
    }

    /** The first message in the cause chain that says where (line, column), else the top one. */
    private static String positioned(StatementException e) {
        for (Throwable t = e.getCause(); t != null; t = t.getCause()) {
            String message = String.valueOf(t.getMessage());
            if (POSITION.matcher(message).find()) {
                return message;
            }
        }
        return e.getCause() != null ? String.valueOf(e.getCause().getMessage()) : e.getMessage();
    }

    private static final Pattern POSITION = Pattern.compile("line \\d+, column \\d+");

    private static String oneLine(String message) {
        String first = message.strip().split("\\R", 2)[0];
        return first.replace('\t', ' ');
    }

    /** A statement failed; {@code statement} is its 1-based position. */
    static final class StatementException extends IllegalArgumentException {
        final int statement;

        StatementException(int statement, String message, Throwable cause) {
            super(message, cause);
            this.statement = statement;
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
